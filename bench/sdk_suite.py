"""Conformance: the goodfire SDK's own end-to-end suite, run against an Ember-compatible server.

The suite lives in goodfire-ai/goodfire-sdk (`tests/e2e/python`), a public repository; this
script needs a checkout of it, so it cannot run in CI (no network there). It copies the suite to
a temporary folder and changes only what must change for another server:

- imports: `sdk.python.goodfire` -> `goodfire` (the installed SDK), `sdk.tests.e2e.python.config`
  -> the suite's own `config` module, and the Anthropic client import is dropped;
- the two model fixtures (`variant_small`, `variant_medium`) name the served model instead of the
  hosted Llama models;
- left out: the Anthropic-judged steering test, the org rate-limit tests and the concurrency
  timing tests (they need Anthropic, a hosted org's limits, or the hosted fleet).

Everything else, including the expected error texts, runs unmodified; then it prints a table of
passed and failed tests with the first line of each failure, and names the failures that depend
on the hosted service (HOSTED_ONLY). The exit status is 0 when every other test passed.

    python -m bench.sdk_suite --sdk ../goodfire-sdk       # starts `ember-bot serve --preset tiny`
    python -m bench.sdk_suite --sdk ../goodfire-sdk --base-url http://127.0.0.1:8000 --api-key K
    python -m bench.sdk_suite --sdk ../goodfire-sdk --json  # one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench import server as bench_server
from bench.common import format_table

SUITE_FOLDER = Path("tests/e2e/python")
LEFT_OUT = {
    "test_workflow_chat_with_variant_feature_edits.py": "Claude judges the replies (Anthropic key)",
    "test_z_org_rate_limit_chat.py": "hosted organisation rate limits",
    "test_concurrent_requests_features.py": "hosted fleet timing under 32 concurrent requests",
}
HOSTED_MODELS = ("meta-llama/Meta-Llama-3.1-8B-Instruct", "meta-llama/Llama-3.3-70B-Instruct")
IMPORT_REWRITES = (
    (re.compile(r"^from sdk\.python import goodfire$", re.M), "import goodfire"),
    (re.compile(r"\bsdk\.python\.goodfire\b"), "goodfire"),
    (re.compile(r"\bsdk\.tests\.e2e\.python\.config\b"), "config"),
    (re.compile(r"^from cajal\..*\n", re.M), ""),
)
# Failures that follow from the suite being written for the hosted service and SDK, each with
# the hosted behaviour it depends on (README, "Conformance", says why a server cannot match it).
HOSTED_ONLY = {
    "_raises_when_unsupported_model_is_provided": "the 422 text lists the hosted catalogue "
    "('meta-llama/Meta-Llama-3.1-8B-Instruct' or 'meta-llama/Llama-3.3-70B-Instruct'); this "
    "server names the one model it serves",
    "test_workflow_features_insepct_context_object_": "SDK 0.3.5: lookup() keeps uuid a str, "
    "inspect's features parse it into a UUID; a str never equals a UUID, whatever the server sends",
}
ANTHROPIC_FIXTURE = re.compile(r"@pytest\.fixture\s*\ndef claude_client\(.*?(?=\n\n\n|\Z)", re.S)
SUITE_TIMEOUT = 1800


@dataclass(frozen=True)
class Outcome:
    file: str
    test: str
    result: str  # passed | failed | error | skipped
    reason: str  # the first line of the failure, or ""

    @property
    def hosted_only(self) -> str:
        """Why this failure is expected of any server but the hosted one ("" if it is not)."""
        if self.result == "passed":
            return ""
        return next((why for part, why in HOSTED_ONLY.items() if part in self.test), "")


def prepare_suite(sdk: Path, served_model: str, into: Path) -> list[str]:
    """Copy the suite from checkout `sdk` into `into`, rewritten; return the files kept."""
    source = sdk / SUITE_FOLDER
    if not (source / "conftest.py").is_file():
        raise SystemExit(f"bench.sdk_suite: {source} is not the SDK's e2e suite (no conftest.py)")
    kept = []
    for path in sorted(source.glob("*.py")):
        if path.name in LEFT_OUT or path.name == "__init__.py":
            continue  # no __init__: pytest puts the folder itself on sys.path, so `config` imports
        text = path.read_text()
        for pattern, replacement in IMPORT_REWRITES:
            text = pattern.sub(replacement, text)
        if path.name == "conftest.py":
            text = ANTHROPIC_FIXTURE.sub("", text)
            for hosted in HOSTED_MODELS:
                text = text.replace(f'base_model="{hosted}"', f'base_model="{served_model}"')
        (into / path.name).write_text(text)
        if path.name.startswith("test_"):
            kept.append(path.name)
    (into / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    return kept


def served_model_id(base_url: str, api_key: str) -> str:
    response = httpx.get(
        f"{base_url}/api/inference/v1/models",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30,
    )
    response.raise_for_status()
    model: str = response.json()["data"][0]["id"]
    return model


def run_suite(folder: Path, base_url: str, api_key: str, selection: str | None) -> list[Outcome]:
    report = folder / "report.xml"
    command = [sys.executable, "-m", "pytest", str(folder), "-q", f"--junitxml={report}"]
    command += ["-k", selection] if selection else []
    environment = {
        **_inherited_environment(),
        "E2E_GOODFIRE_API_KEY": api_key,
        "E2E_GOODFIRE_SDK_CLIENT_BASE_URL": base_url,
    }
    subprocess.run(
        command,
        cwd=folder,
        env=environment,
        stdout=subprocess.DEVNULL,
        timeout=SUITE_TIMEOUT,
        check=False,
    )
    if not report.is_file():
        raise SystemExit("bench.sdk_suite: pytest wrote no report (could not start?)")
    return parse_report(report)


def _inherited_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("E2E_")}


def parse_report(report: Path) -> list[Outcome]:
    outcomes = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        file = case.get("classname", "").rsplit(".", 1)[-1] + ".py"
        result, reason = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                result = "failed" if tag == "failure" else tag
                reason = _first_line(element.get("message") or element.text or "")
                break
        outcomes.append(Outcome(file, case.get("name", ""), result, reason))
    return outcomes


def _first_line(message: str, width: int = 160) -> str:
    line = next((part.strip() for part in message.splitlines() if part.strip()), "")
    return line if len(line) <= width else line[: width - 1] + "…"


def render(outcomes: list[Outcome], model: str) -> str:
    rows = [(o.test, o.result, o.reason) for o in outcomes]
    table = format_table(("test", "result", "first line of the failure"), rows)
    reasons: dict[str, list[str]] = {}
    for outcome in outcomes:
        if outcome.hosted_only:
            reasons.setdefault(outcome.hosted_only, []).append(outcome.test)
    notes = "\n".join(
        f"  {len(tests)} ({', '.join(tests)}): {why}" for why, tests in reasons.items()
    )
    left_out = "\n".join(f"  {name}: {why}" for name, why in LEFT_OUT.items())
    return (
        f"{table}\n\n{summary(outcomes, model)}\n"
        f"Failures that depend on the hosted service:\n{notes or '  none'}\n"
        f"Left out:\n{left_out}"
    )


def summary(outcomes: list[Outcome], model: str) -> str:
    passed = sum(outcome.result == "passed" for outcome in outcomes)
    hosted = sum(bool(outcome.hosted_only) for outcome in outcomes)
    return (
        f"{passed} passed of {len(outcomes)} against {model}; of the {len(outcomes) - passed} "
        f"others, {hosted} depend on the hosted service"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sdk_suite", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sdk", type=Path, required=True, help="a goodfire-sdk checkout")
    target = parser.add_argument_group("the server (default: start `ember-bot serve` here)")
    target.add_argument("--base-url", help="test a server that is already running")
    target.add_argument("--api-key", default="conformance", help="bearer key of that server")
    target.add_argument("--preset", default="tiny", help="preset to serve (default: %(default)s)")
    target.add_argument("--device", default="auto", help="device to serve on (default: auto)")
    target.add_argument("--dtype", default="auto", help="dtype to serve in (default: auto)")
    parser.add_argument("-k", dest="selection", help="pytest -k expression: run only these")
    parser.add_argument("--keep", type=Path, help="write the rewritten suite here and keep it")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def server_options(args: argparse.Namespace) -> argparse.Namespace:
    """What `bench.server.served` reads, with that benchmark's defaults for the rest."""
    options = ["--preset", args.preset, "--device", args.device, "--dtype", args.dtype]
    options += ["--base-url", args.base_url] if args.base_url else []
    return bench_server.build_parser().parse_args(options)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.sdk / SUITE_FOLDER / "conftest.py").is_file():
        parser.error(f"--sdk {args.sdk}: no {SUITE_FOLDER}/conftest.py (a goodfire-sdk checkout?)")
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: give a new or empty folder")
    server = bench_server.served(server_options(args))
    with server as base_url, tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            model = served_model_id(base_url, args.api_key)
        except httpx.HTTPError as error:
            raise SystemExit(f"bench.sdk_suite: cannot list the served model: {error}") from None
        prepare_suite(args.sdk, model, folder)
        outcomes = run_suite(folder, base_url, args.api_key, args.selection)
    if args.json:
        passed = sum(outcome.result == "passed" for outcome in outcomes)
        tests = [{**asdict(o), "hosted_only": o.hosted_only} for o in outcomes]
        print(
            json.dumps({"model": model, "passed": passed, "total": len(outcomes), "tests": tests})
        )
    else:
        print(render(outcomes, model))
    unexplained = [o for o in outcomes if o.result != "passed" and not o.hosted_only]
    return 0 if outcomes and not unexplained else 1


if __name__ == "__main__":
    sys.exit(main())
