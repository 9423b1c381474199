"""Names to factories: built-ins, registrations, entry points, import paths
(callbridge._registry)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import attrs
import pytest

import callbridge
from callbridge import ConfigError, RegistrationError, Registry
from callbridge._registry import BUILTINS, import_object
from callbridge.testing import use_registry

#: The built-in names as messages list them.
AVAILABLE = ", ".join(sorted(BUILTINS))


def test_builtins_are_registered_by_import_string() -> None:
    """Listing the built-ins imports none of them: their targets are strings until used."""
    entries = Registry(BUILTINS, entry_point_group=None).entries()
    assert {name: (e.target, e.origin) for name, e in entries.items()} == {
        name: (target, "built-in") for name, target in BUILTINS.items()
    }


def test_builtins_resolve_to_their_classes() -> None:
    from callbridge.callbacks.early_stopping import EarlyStoppingCallback
    from callbridge.callbacks.log import LogCallback

    registry = callbridge.default_registry()
    assert registry.resolve("log")[0] is LogCallback
    assert registry.resolve("early_stopping")[0] is EarlyStoppingCallback


def test_register_then_build_by_name() -> None:
    from sample_callbacks import Scorer

    callbridge.register("acme.scorer", Scorer)
    [scorer] = callbridge.build(
        {"custom_callbacks": [{"name": "acme.scorer", "args": {"threshold": "0.9"}}]}
    )
    assert scorer == Scorer(threshold=0.9)


def test_registering_a_taken_name_is_an_error_that_says_how_to_override() -> None:
    from sample_callbacks import Scorer

    with pytest.raises(RegistrationError) as info:
        callbridge.register("log", Scorer)
    assert str(info.value) == (
        "callback name 'log' is already registered (built-in: "
        "callbridge.callbacks.log:LogCallback); "
        "pass replace=True to override it, or choose another name"
    )
    assert callbridge.default_registry().resolve("log")[0].__name__ == "LogCallback"


def test_replace_true_overrides_a_name() -> None:
    from sample_callbacks import Scorer

    callbridge.register("log", Scorer, replace=True)
    entry = callbridge.default_registry().entries()["log"]
    assert (entry.target, entry.origin) == (Scorer, "registered")


def test_registering_the_same_object_twice_is_harmless() -> None:
    from sample_callbacks import Scorer

    callbridge.register("acme.scorer", Scorer)
    callbridge.register("acme.scorer", Scorer)
    assert callbridge.default_registry().entries()["acme.scorer"].target is Scorer


@pytest.mark.parametrize(
    ("name", "obj", "message"),
    [
        ("", int, "a callback name must be a non-empty str (got '' that is a str)"),
        (
            "acme.x",
            3,
            "cannot register 'acme.x': expected a class or a factory callable (got 3 that is an "
            "int)",
        ),
    ],
)
def test_registering_something_unusable_is_an_error(name: str, obj: object, message: str) -> None:
    with pytest.raises(RegistrationError) as info:
        callbridge.register(name, obj)
    assert str(info.value) == message


def test_callback_plugin_registers_the_decorated_class_and_returns_it() -> None:
    @callbridge.callback_plugin("acme.monitor")
    @attrs.define
    class UploadMonitor(callbridge.Callback):
        upload_url: str
        upload_interval: int = 50

    assert UploadMonitor.__name__ == "UploadMonitor"
    [monitor] = callbridge.build(
        {
            "custom_callbacks": [
                {"name": "acme.monitor", "args": {"upload_url": "http://x", "upload_interval": "5"}}
            ]
        },
        strict=True,
    )
    assert monitor == UploadMonitor("http://x", 5)


def test_callback_plugin_on_a_factory_function() -> None:
    @callbridge.callback_plugin("acme.factory")
    def make(threshold: float = 0.1) -> object:
        from sample_callbacks import Scorer

        return Scorer(threshold)

    [scorer] = callbridge.build(
        {"custom_callbacks": [{"name": "acme.factory", "args": {"threshold": "0.3"}}]}
    )
    assert scorer.threshold == 0.3


def test_registrations_in_one_test_registry_do_not_leak() -> None:
    with use_registry():
        callbridge.register("acme.temporary", dict)
        assert "acme.temporary" in callbridge.default_registry().entries()
    assert "acme.temporary" not in callbridge.default_registry().entries()


def test_entries_returns_a_copy() -> None:
    entries = callbridge.default_registry().entries()
    entries.clear()
    assert "log" in callbridge.default_registry().entries()


@pytest.mark.parametrize(
    "name",
    [
        "sample_callbacks.Scorer",
        "sample_callbacks:Scorer",
        "my_company.callbacks.AlertCallback",
        "my_company.callbacks:AlertCallback",
    ],
)
def test_dotted_and_colon_import_paths_resolve(name: str) -> None:
    factory, entry = callbridge.default_registry().resolve(name)
    assert factory.__name__ == name.replace(":", ".").rsplit(".", 1)[1]
    assert entry.origin == "import path"


def test_colon_path_reaches_nested_attributes() -> None:
    assert import_object("callbridge._spec:CallbacksConfig.key") is callbridge.CallbacksConfig.key


def test_an_import_path_may_name_a_factory_function() -> None:
    [recorder] = callbridge.build(
        {"custom_callbacks": [{"name": "sample_callbacks.make_recorder", "args": {"tag": "t"}}]}
    )
    assert type(recorder).__name__ == "Recorder"
    assert recorder.tag == "t"


def test_import_path_from_tmp_path_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "acme_tmp_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "mod.py").write_text(
        "import callbridge\n\nclass Ping(callbridge.Callback):\n    def __init__(self, n: int = "
        "1):\n"
        "        self.n = n\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_tmp_pkg", raising=False)
    monkeypatch.delitem(sys.modules, "acme_tmp_pkg.mod", raising=False)
    [ping] = callbridge.build(
        {"custom_callbacks": [{"name": "acme_tmp_pkg.mod:Ping", "args": {"n": "4"}}]}
    )
    assert ping.n == 4


def test_unknown_name_suggests_the_closest_and_lists_the_available() -> None:
    registry = Registry(BUILTINS, entry_point_group=None)
    with pytest.raises(ConfigError) as info:
        callbridge.build({"custom_callbacks": ["logg"]}, registry=registry, strict=True)
    assert str(info.value) == (
        "<mapping>: custom_callbacks[0]: unknown callback 'logg'. Did you mean 'log'? "
        f"Available: {AVAILABLE}."
    )


def test_unknown_name_without_a_close_match_still_lists_the_available() -> None:
    registry = Registry(BUILTINS, entry_point_group=None)
    with pytest.raises(ConfigError) as info:
        registry.resolve("zzz", source="c.yaml", key_path="custom_callbacks[3]")
    assert (
        str(info.value)
        == f"c.yaml: custom_callbacks[3]: unknown callback 'zzz'. Available: {AVAILABLE}."
    )


def test_unimportable_dotted_name_says_which_module_is_missing() -> None:
    registry = Registry(BUILTINS, entry_point_group=None)
    with pytest.raises(ConfigError) as info:
        registry.resolve("acme_missing_pkg.callbacks.Upload", source="c.yaml", key_path="k")
    assert str(info.value) == (
        "c.yaml: k: unknown callback 'acme_missing_pkg.callbacks.Upload': not a registered name, "
        "and "
        f"no module named 'acme_missing_pkg'. Registered names: {AVAILABLE}."
    )


def test_a_missing_attribute_of_an_existing_module_is_named() -> None:
    registry = Registry(BUILTINS, entry_point_group=None)
    with pytest.raises(ConfigError) as info:
        registry.resolve("my_company.callbacks:MonitorCallbak")
    assert "module 'my_company.callbacks' has no attribute 'MonitorCallbak'" in str(info.value)


def test_a_plugin_whose_import_fails_reports_its_own_error() -> None:
    """A broken dependency inside a plugin is not mistaken for a missing plugin."""
    with pytest.raises(ConfigError) as info:
        callbridge.default_registry().resolve("broken_plugin.Thing")
    assert (
        "importing 'broken_plugin' failed: ImportError: simulated: the plugin needs a package "
        "that is not installed"
    ) in str(info.value)


def test_a_registered_import_string_that_fails_names_its_origin() -> None:
    callbridge.register("acme.gone", "acme_missing_pkg.mod:Gone")
    with pytest.raises(ConfigError) as info:
        callbridge.default_registry().resolve("acme.gone")
    assert info.value.message == (
        "callback 'acme.gone' (registered: acme_missing_pkg.mod:Gone) cannot be imported: "
        "no module named 'acme_missing_pkg'"
    )


# Entry points, from a real distribution on sys.path.


def make_distribution(root: Path, dist: str, version: str, entry_points: dict[str, str]) -> None:
    """Write ``<dist>-<version>.dist-info`` with METADATA and entry_points.txt under ``root``."""
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[callbridge.callbacks]\n{lines}", encoding="utf-8")


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "acme_ep_plugin.py").write_text(
        "import callbridge\n\n"
        "class Heartbeat(callbridge.Callback):\n"
        '    """Beats every n steps."""\n\n'
        "    def __init__(self, every: int = 10):\n        self.every = every\n",
        encoding="utf-8",
    )
    make_distribution(
        tmp_path,
        "acme-callbacks",
        "1.4.2",
        {"acme.heartbeat": "acme_ep_plugin:Heartbeat", "log": "acme_ep_plugin:Heartbeat"},
    )
    monkeypatch.delitem(sys.modules, "acme_ep_plugin", raising=False)
    return tmp_path


def test_entry_points_are_read_on_first_need_with_their_distribution(
    plugin_dist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(BUILTINS)  # created before the distribution is importable
    monkeypatch.syspath_prepend(str(plugin_dist))
    entry = registry.entries()["acme.heartbeat"]
    assert entry.origin == "entry point from acme-callbacks 1.4.2"
    assert entry.target == "acme_ep_plugin:Heartbeat"
    assert "acme_ep_plugin" not in sys.modules  # listed, not imported


def test_an_entry_point_name_builds_its_callback(
    plugin_dist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(plugin_dist))
    with use_registry(Registry(BUILTINS)):
        [beat] = callbridge.build(
            {"custom_callbacks": [{"name": "acme.heartbeat", "args": {"every": "3"}}]}
        )
    assert (type(beat).__name__, beat.every) == ("Heartbeat", 3)


def test_an_entry_point_cannot_take_a_builtin_name(
    plugin_dist: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(plugin_dist))
    registry = Registry(BUILTINS)
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        entries = registry.entries()
    assert entries["log"].origin == "built-in"
    [record] = [r for r in caplog.records if "entry point 'log'" in r.getMessage()]
    assert record.getMessage() == (
        "callbridge: the entry point 'log' (entry point from acme-callbacks 1.4.2) is ignored: "
        "the name "
        "is already taken (built-in: callbridge.callbacks.log:LogCallback). Rename the entry "
        "point, "
        "or unregister the other name first."
    )


def test_a_registry_without_entry_points_never_reads_them(
    plugin_dist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(plugin_dist))
    assert "acme.heartbeat" not in Registry(BUILTINS, entry_point_group=None).entries()


def test_copy_is_independent() -> None:
    original = Registry(BUILTINS, entry_point_group=None)
    clone = original.copy()
    clone.register("acme.only_in_clone", dict)
    clone.unregister("log")
    assert set(original.entries()) == set(BUILTINS)
    assert set(clone.entries()) == (set(BUILTINS) - {"log"}) | {"acme.only_in_clone"}
