"""Both stores offer the same methods with the same signatures, and StateStore names them all:
a method added to one store (and used by the bot) cannot be missing from the other."""

import inspect

from storage.interface import StateStore
from storage.postgres import PostgresStore
from storage.store import Store


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_both_stores_have_the_same_methods_and_the_interface_names_them():
    sqlite, postgres = public_methods(Store), public_methods(PostgresStore)
    assert sqlite == postgres
    interface = public_methods(StateStore)
    assert set(interface) == set(sqlite)
    for name, signature in interface.items():
        assert signature == sqlite[name], name
