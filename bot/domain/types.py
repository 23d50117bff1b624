"""Platform-neutral value types shared by the use cases, the backend client and storage."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SessionKey:
    """One channel on one platform: `platform:workspace:channel`."""

    platform: str
    workspace: str
    channel: str

    def __str__(self) -> str:
        return f"{self.platform}:{self.workspace}:{self.channel}"


@dataclass(frozen=True)
class Actor:
    """Who asked; recorded in the audit log."""

    user_id: str
    display_name: str

    def __str__(self) -> str:
        return f"{self.display_name} ({self.user_id})"


@dataclass(frozen=True)
class FeatureRef:
    """One SAE feature. `index_in_sae` is its identity; `label` is for display only."""

    index_in_sae: int
    label: str
    uuid: str = ""
    # A generated label's detection score (`ember-bot label`), where the server reports one.
    label_score: float | None = field(default=None, compare=False)


def named_feature(features: list[FeatureRef], query: str) -> FeatureRef | None:
    """The feature among `features` whose label or index (`#12`, `12`) is exactly `query`."""
    wanted = query.strip().lower().lstrip("#")
    return next((f for f in features if wanted in (f.label.lower(), str(f.index_in_sae))), None)


@dataclass(frozen=True)
class FeatureEdit:
    """A nudge of `value` (in [-1, 1]) on one feature."""

    feature: FeatureRef
    value: float


@dataclass(frozen=True)
class FeatureActivation:
    """How strongly a feature fired over a stretch of conversation."""

    feature: FeatureRef
    activation: float


@dataclass(frozen=True)
class TokenActivation:
    """How strongly one feature fired on one token."""

    token: str
    activation: float


@dataclass(frozen=True)
class Guard:
    """Stop generating once `feature` fires above `threshold` (in the units /inspect shows)."""

    feature: FeatureRef
    threshold: float

    @property
    def event_name(self) -> str:
        """The name the server reports in `gf_event_names` when this guard fires."""
        return f"guard:{self.feature.index_in_sae}"

    def describe(self) -> str:
        return f'the guard on "{self.feature.label}" (> {self.threshold:g})'


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str

    def as_wire(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None  # None: the gateway picks a fresh seed per request


@dataclass
class VariantState:
    """A named variant as we store it: edits keyed by index_in_sae.

    `base_model` is empty until known (an import names it; exports ask the backend).
    `guards` (keyed by index_in_sae too) stop generation when their feature fires too strongly.
    """

    name: str
    base_model: str
    edits: dict[int, FeatureEdit] = field(default_factory=dict)
    guards: dict[int, Guard] = field(default_factory=dict)

    def sorted_edits(self) -> list[FeatureEdit]:
        return sorted(self.edits.values(), key=lambda e: (-abs(e.value), e.feature.index_in_sae))

    def sorted_guards(self) -> list[Guard]:
        return sorted(self.guards.values(), key=lambda g: g.feature.index_in_sae)

    @property
    def is_steered(self) -> bool:
        return bool(self.edits or self.guards)
