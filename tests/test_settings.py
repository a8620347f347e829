"""Settings and the command line (in process, but for one run of ``crdtnb serve --help``):
every field with command-line metadata is one flag of its own, each flag lands on its
field, sizes and repeatable flags parse, environment defaults apply, and no flag at all
gives exactly the dataclass defaults."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import MISSING, Field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from crdtnb.settings import AccessSettings, KernelSettings, RoomSettings, Settings, TransportLimits

ROOT = Path("notebooks")
ENV_DEFAULTS = ("CRDTNB_TOKEN", "CRDTNB_METRICS_TOKEN")


def _cli_fields() -> list[tuple[str, Field[Any]]]:
    """(section, field) of every field that has a flag; section "" is Settings itself."""
    found: list[tuple[str, Field[Any]]] = [("", f) for f in fields(Settings) if f.metadata.get("cli")]
    for section in fields(Settings):
        if section.default_factory is MISSING:
            continue
        section_default = section.default_factory()
        if is_dataclass(section_default):
            found += [(section.name, f) for f in fields(section_default) if f.metadata.get("cli")]
    return found


def _flag(f: Field[Any]) -> str:
    """The flag a field documents: its own, else --its-name."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crdtnb serve", exit_on_error=False)
    Settings.add_arguments(parser)
    return parser


def _parse(*argv: str) -> Settings:
    return Settings.from_args(_parser().parse_args(list(argv)), ROOT)


def _with(settings: Settings, section: str, name: str, value: Any) -> Settings:
    if not section:
        return replace(settings, **{name: value})
    return replace(settings, **{section: replace(getattr(settings, section), **{name: value})})


def _sample(f: Field[Any]) -> tuple[list[str], Any]:
    """Arguments that set a field to something other than its default, and the value expected."""
    meta = f.metadata
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    if meta.get("repeat"):
        return ["a", "b"], ("a", "b")
    if meta.get("choices"):
        choice = next(c for c in meta["choices"] if c != default)
        return [choice], choice
    parse = meta.get("parse")
    if parse is float:
        return ["2.5"], 2.5
    if parse is int:
        return ["7"], 7
    if parse is Path:
        return ["/srv/state"], Path("/srv/state")
    if parse is not None:  # a byte size
        return ["3k"], 3 * 1024
    return ["sample"], "sample"


@pytest.fixture(autouse=True)
def no_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_DEFAULTS:
        monkeypatch.delenv(name, raising=False)


# -- the flags -------------------------------------------------------------------------------------


def test_every_settings_field_with_cli_metadata_is_a_flag_of_serve_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crdtnb", "serve", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    shown = set(re.findall(r"^\s+(--[a-z][a-z-]*)", result.stdout, flags=re.MULTILINE))
    expected = {_flag(f) for _, f in _cli_fields()}
    assert shown - {"--help"} == expected
    for section in ("general", "server", "access", "rooms", "files", "kernels", "transport"):
        assert re.search(rf"^{section}:$", result.stdout, flags=re.MULTILINE), f"no {section} group"


def test_the_flags_documented_in_the_readme_exist() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("| section | flags (defaults) |") :].split("\n\n", 1)[0]
    documented = set(re.findall(r"`(--[a-z-]+)`", table))
    assert documented == {_flag(f) for _, f in _cli_fields()}


def test_no_two_fields_share_a_flag() -> None:
    flags = [_flag(f) for _, f in _cli_fields()]
    assert len(flags) == len(set(flags))
    options = [option for action in _parser()._actions for option in action.option_strings if option not in ("-h", "--help")]
    assert sorted(options) == sorted(flags)


def test_without_flags_the_settings_are_the_dataclass_defaults() -> None:
    assert _parse() == Settings(root=ROOT)


@pytest.mark.parametrize(("section", "f"), _cli_fields(), ids=lambda value: value if isinstance(value, str) else value.name)
def test_each_flag_sets_its_own_field_and_nothing_else(section: str, f: Field[Any]) -> None:
    args, expected = _sample(f)
    argv = [item for value in args for item in (_flag(f), value)] if f.metadata.get("repeat") else [_flag(f), *args]
    assert _parse(*argv) == _with(Settings(root=ROOT), section, f.name, expected)


# -- values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("65536", 65536), ("16k", 16 * 2**10), ("16K", 16 * 2**10), ("1M", 2**20), ("64MiB", 64 * 2**20), ("64mb", 64 * 2**20), ("1.5m", 3 * 2**19), ("2G", 2 * 2**30), (" 8 KiB ", 8 * 2**10)],
)
def test_sizes_take_units(text: str, size: int) -> None:
    assert _parse("--max-frame-bytes", text).transport == TransportLimits(max_frame_bytes=size)
    assert _parse("--max-presence-state-bytes", text).rooms == RoomSettings(max_presence_state_bytes=size)


@pytest.mark.parametrize("text", ["lots", "64XB", "", "k"])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentError, match="max-stream-bytes"):
        _parse("--max-stream-bytes", text)


def test_a_choice_outside_the_list_is_refused() -> None:
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        _parse("--kernel-sandbox", "docker")


def test_allow_origin_is_repeatable_and_keeps_order() -> None:
    settings = _parse("--allow-origin", "https://b.example", "--allow-origin", "https://a.example")
    assert settings.access.allowed_origins == ("https://b.example", "https://a.example")
    assert _parse("--allow-origin", "https://one.example").access.allowed_origins == ("https://one.example",)


def test_tokens_default_to_their_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRDTNB_TOKEN", "from-env")
    monkeypatch.setenv("CRDTNB_METRICS_TOKEN", "metrics-from-env")
    assert _parse().access == AccessSettings(token="from-env", metrics_token="metrics-from-env")
    assert _parse("--token", "from-flag").access.token == "from-flag"


def test_an_empty_environment_variable_is_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRDTNB_TOKEN", "")
    assert _parse().access.token is None


def test_a_flag_named_apart_from_its_field_lands_on_the_field() -> None:
    settings = _parse("--cull-idle-kernels", "300", "--kernel-sandbox", "none", "--max-send-queue-bytes", "1M")
    assert settings.kernels == KernelSettings(cull_idle=300.0, sandbox="none")
    assert settings.transport == TransportLimits(max_queue_bytes=2**20)


def test_the_state_directory_defaults_under_the_root(tmp_path: Path) -> None:
    assert Settings(root=tmp_path).state_path == tmp_path.resolve() / ".crdtnb"
    assert Settings.from_args(_parser().parse_args(["--state-dir", str(tmp_path / "s")]), tmp_path).state_path == tmp_path / "s"
