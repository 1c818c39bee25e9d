"""The daemon's settings: one table of options shared by the command line and the TOML config file.

Precedence: built-in defaults < config file < flags. Config-file keys are the
flag names with underscores (``state_dir = "/var/lib/pyfundus"``); relative
paths in the file are taken relative to the file. Unknown keys are errors, so
a typo never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyfundus.verdicts import OUTCOMES

from .errors import ConfigError
from .statedir import default_state_dir

# The headings ``watch --help`` lists the options under, in order; every option names one.
OPTION_GROUPS: dict[str, str] = {
    "folder": "the watched folder and the state directory",
    "model": "model and scoring",
    "output": "output, log and privacy",
    "timing": "timing and queue",
    "web": "operator page (also /healthz and /metrics)",
    "alerts": "alerts and reject actions (all off until configured)",
}


@dataclass(frozen=True)
class Option:
    """One setting. ``kind`` drives both the flag's parser and the config-file check; ``group`` is its
    heading in ``--help`` (a key of OPTION_GROUPS)."""

    name: str
    kind: str  # path, seconds, count, port, score (0-100), bool, text, globs, choice, classes (list of choices),
    # command (argv) or models (KEY=FILE rules: in the config file a table)
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    alias: str | None = None  # a shorter flag, e.g. --port for --web-port
    group: str = ""

    def __post_init__(self) -> None:
        if self.group not in OPTION_GROUPS:
            raise ValueError(f"option {self.name}: group must be one of {', '.join(OPTION_GROUPS)}, got {self.group!r}")

    @property
    def flags(self) -> tuple[str, ...]:
        return ("--" + self.name.replace("_", "-"),) + ((self.alias,) if self.alias else ())


OPTIONS: tuple[Option, ...] = (
    Option("state_dir", "path", "ledger, lock and log folder "
           "(default: $PYFUNDUS_STATE_DIR or ~/.local/state/pyfundus)", "DIR", group="folder"),
    Option("poll", "seconds", "poll the folder every SECONDS instead of using file events "
           "(network shares: SMB, NFS)", "SECONDS", group="folder"),
    Option("recursive", "bool", "also watch sub-folders", group="folder"),
    Option("ignore", "globs", "ignore file names (or relative paths) matching GLOB; repeatable, adds to the built-in "
           "temporary-file patterns", "GLOB", group="folder"),
    Option("sidecars", "path", "write one JSON verdict per capture into DIR (mirrors the folder layout)", "DIR",
           group="output"),
    Option("model", "text", "registered model name or .safetensors file (default: shipped model)", "NAME|PATH",
           group="model"),
    Option("camera_models", "models", "score this camera's captures with their own model (a site model from "
           "pyfundus adapt); KEY is the camera as verdicts name it; repeatable (in the config file: a table)",
           "KEY=FILE", group="model"),
    Option("folder_models", "models", "score the captures in this sub-folder with their own model (for cameras "
           "whose files do not name them); wins over --camera-model; repeatable (in the config file: a table)",
           "SUBFOLDER=FILE", group="model"),
    Option("device", "text", "cpu, cuda, cuda:N or auto (default: cpu)", "DEVICE", group="model"),
    Option("backend", "choice", "runtime: torch, onnxruntime, tensorrt or auto (default: torch; for .onnx/.engine "
           "models, the file's runtime)", None,
           ("torch", "onnxruntime", "tensorrt", "auto"), group="model"),
    Option("precision", "choice", "fp32, fp16 or bf16 (default: fp32 on CPU, fp16 on CUDA; bf16 is the fast one on "
           "CPUs with AMX or AVX512-BF16)", None, ("fp32", "fp16", "bf16"), group="model"),
    Option("compile", "bool", "torch.compile the torch backend: start-up takes about a minute longer (it compiles "
           "for one image and for batches), scoring then runs faster (see benchmarks/RESULTS.md)", group="model"),
    Option("batch_size", "count", "most images per model call (default: 8)", "N", group="model"),
    Option("remote", "text", "score on this scoring server (pyfundus serve), e.g. http://127.0.0.1:8000/score; the "
           "local model scores when it is unreachable or slow. Each capture's bytes (which hold patient data) "
           "go to it: use a server on this machine or an https:// URL on a network you trust", "URL", group="model"),
    Option("remote_timeout", "seconds", "how long the scoring server has for the whole of one capture before the "
           "local model scores it instead (default: 2)", "SECONDS", group="model"),
    Option("reject_below", "score", "grade Reject below this score (default: the threshold stored with the model)",
           "SCORE", group="model"),
    Option("good_from", "score", "grade Good from this score up (default: the threshold stored with the model)",
           "SCORE", group="model"),
    Option("json", "bool", "print one JSON object per verdict instead of a text line", group="output"),
    Option("redact_identifiers", "bool", "keep file names and patient IDs out of the log", group="output"),
    Option("allow_inside_folder", "bool", "allow the state or sidecar folder inside the watched folder",
           group="folder"),
    Option("debounce", "seconds", "quiet time after a file event before looking at the file (default: 0.2)",
           "SECONDS", group="timing"),
    Option("settle", "seconds", "gap between the two size/mtime looks of the stability check "
           "(default: 1.0)", "SECONDS", group="timing"),
    Option("incomplete_grace", "seconds", "how long a file that looks cut short may stay unchanged before it is "
           "scored anyway, as truncated (default: 5)", "SECONDS", group="timing"),
    Option("reconcile_interval", "seconds", "full folder scan every SECONDS, catching anything events missed "
           "(default: 30)", "SECONDS", group="timing"),
    Option("liveness_interval", "seconds", "how often the file-event observer is checked and restarted "
           "(default: 1)", "SECONDS", group="timing"),
    Option("queue_size", "count", "captures waiting for the scorer before intake waits (default: 64)", "N",
           group="timing"),
    Option("drain_timeout", "seconds", "on SIGTERM, how long to keep scoring queued captures (default: 30)",
           "SECONDS", group="timing"),
    Option("log_level", "choice", "log file level (default: info)", None, ("debug", "info", "warning", "error"),
           group="output"),
    # The operator page, /healthz and /metrics (web.py).
    Option("web", "bool", "serve the operator page, /healthz and /metrics (default: on)", group="web"),
    Option("web_host", "text", "address the operator page listens on (default: 127.0.0.1, this machine only; "
           "any other address shows patient IDs and file names to the network)", "HOST", group="web"),
    Option("web_port", "port", "operator page port; 0 picks a free one and logs it (default: 8470)", "PORT",
           alias="--port", group="web"),
    # Alerts and reject actions (alerts.py, rejects.py): all off until configured.
    Option("alert_on", "classes", "which verdicts trigger the alerts; repeatable (default: Reject and Failed)", "CLASS",
           OUTCOMES, group="alerts"),
    Option("alert_command", "command", "run COMMAND for each alert with the verdict as JSON on its stdin; no shell "
           "(in the config file: a list of arguments)", "COMMAND", group="alerts"),
    Option("alert_webhook", "text", "POST each alert as JSON to this http(s) URL, from a background queue", "URL",
           group="alerts"),
    Option("alert_desktop", "bool", "show a desktop notification for each alert (needs notify-send)", group="alerts"),
    Option("alert_redact", "bool", "leave file names, patient IDs and DICOM UIDs out of the command's and the "
           "webhook's JSON (default: on)", group="alerts"),
    Option("alert_timeout", "seconds", "most seconds one command run or webhook request may take (default: 5)",
           "SECONDS", group="alerts"),
    Option("alert_attempts", "count", "webhook tries per alert, with doubling pauses from 1 s (default: 4)", "N",
           group="alerts"),
    Option("reject_action", "choice", "copy or move captures graded Reject into --reject-folder once their verdict "
           "is saved (default: off; the camera's files are never touched)", None, ("off", "copy", "move"),
           group="alerts"),
    Option("reject_folder", "path", "where --reject-action puts rejected captures", "DIR", group="alerts"),
    Option("enhance_usable", "path", "write an enhanced copy of each capture graded Usable into DIR (pyfundus enhance; "
           "outside the watched folder), shown beside it on the operator page (default: off)", "DIR", group="output"),
)  # fmt: skip


@dataclass
class WatchConfig:
    folder: Path
    state_dir: Path = field(default_factory=default_state_dir)
    poll: float | None = None
    recursive: bool = False
    ignore: list[str] = field(default_factory=list)
    sidecars: Path | None = None
    model: str | None = None
    camera_models: dict[str, Path] = field(default_factory=dict)
    folder_models: dict[str, Path] = field(default_factory=dict)
    device: str = "cpu"
    backend: str | None = None
    precision: str | None = None
    compile: bool = False
    batch_size: int = 8
    remote: str | None = None
    remote_timeout: float = 2.0
    reject_below: float | None = None
    good_from: float | None = None
    json: bool = False
    redact_identifiers: bool = False
    allow_inside_folder: bool = False
    debounce: float = 0.2
    settle: float = 1.0
    incomplete_grace: float = 5.0
    reconcile_interval: float = 30.0
    liveness_interval: float = 1.0
    queue_size: int = 64
    drain_timeout: float = 30.0
    log_level: str = "info"
    web: bool = True
    web_host: str = "127.0.0.1"
    web_port: int = 8470
    alert_on: list[str] = field(default_factory=lambda: ["Reject", "Failed"])
    alert_command: list[str] | None = None
    alert_webhook: str | None = None
    alert_desktop: bool = False
    alert_redact: bool = True
    alert_timeout: float = 5.0
    alert_attempts: int = 4
    reject_action: str = "off"
    reject_folder: Path | None = None
    enhance_usable: Path | None = None

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).expanduser()
        self.state_dir = Path(self.state_dir).expanduser()
        if self.sidecars is not None:
            self.sidecars = Path(self.sidecars).expanduser()
        if self.reject_folder is not None:
            self.reject_folder = Path(self.reject_folder).expanduser()
        if self.enhance_usable is not None:
            self.enhance_usable = Path(self.enhance_usable).expanduser()
        # Flags give (KEY, FILE) pairs, the config file a table: either way a mapping.
        self.camera_models = {key: Path(path).expanduser() for key, path in dict(self.camera_models).items()}
        self.folder_models = {key.strip("/"): Path(path).expanduser() for key, path in dict(self.folder_models).items()}

    def validate(self) -> None:
        """Checks that need the file system: the folder exists, outputs stay out of it."""
        if not self.folder.is_dir():
            raise ConfigError(f"watched folder {self.folder} does not exist or is not a folder")
        if self.reject_action != "off" and self.reject_folder is None:
            raise ConfigError(f"--reject-action {self.reject_action} needs --reject-folder DIR")
        if self.alert_webhook is not None and not self.alert_webhook.startswith(("http://", "https://")):
            raise ConfigError(f"alert_webhook must be an http:// or https:// URL, got {self.alert_webhook!r}")
        if self.remote is not None and not self.remote.startswith(("http://", "https://")):
            raise ConfigError(f"remote must be an http:// or https:// URL, got {self.remote!r}")
        root = Path(os.path.realpath(self.folder))
        if not self.allow_inside_folder:
            outputs = (("state directory", self.state_dir), ("sidecar folder", self.sidecars),
                       ("reject folder", self.reject_folder), ("enhanced-copy folder", self.enhance_usable))  # fmt: skip
            for label, path in outputs:
                # The camera folder belongs to the camera: writing there can confuse its software
                # and, for the state directory, would make the ledger watch itself.
                if path is not None and Path(os.path.realpath(path)).is_relative_to(root):
                    raise ConfigError(
                        f"the {label} {path} is inside the watched folder {self.folder}; "
                        "choose another place, or pass --allow-inside-folder"
                    )


# Every WatchConfig field is settable from the file; tests check the two lists agree.
CONFIG_KEYS = {option.name: option for option in OPTIONS} | {"folder": Option("folder", "path", "", group="folder")}


def load_config(flags: dict[str, Any], config_file: Path | None = None) -> WatchConfig:
    """Merge the config file (if any) and the flags that were given (flags win), then validate."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_config_file(config_file))
    values.update({key: value for key, value in flags.items() if key in CONFIG_KEYS})
    if "folder" not in values:
        raise ConfigError("no folder to watch: give FOLDER or set folder in the config file")
    config = WatchConfig(**values)
    config.validate()
    return config


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(CONFIG_KEYS))}"
        )
    base = Path(path).parent
    return {key: _from_file(CONFIG_KEYS[key], value, base, path) for key, value in raw.items()}


def _from_file(option: Option, value: Any, base: Path, source: Path) -> Any:
    where = f"config file {source}: {option.name}"
    if option.kind == "path":
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a path string")
        return base / Path(value).expanduser()
    if option.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if option.kind == "globs":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{where} must be a list of strings, e.g. ["*.xml"]')
        return value
    if option.kind == "classes":
        if not isinstance(value, list) or not all(v in option.choices for v in value):
            raise ConfigError(f"{where} must be a list of {', '.join(option.choices)}")
        return value
    if option.kind == "models":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f'{where} must be a table of model files, e.g. "TOPCON NW400" = "topcon.safetensors"')
        return {key: base / Path(path).expanduser() for key, path in value.items()}
    if option.kind == "command":
        if isinstance(value, str):
            try:
                return split_command(value)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise ConfigError(f"{where}: {exc}") from exc
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{where} must be a list of arguments, e.g. ["/usr/local/bin/page-nurse", "--ward", "3"]')
        return value
    if option.kind in ("text", "choice"):
        if not isinstance(value, str) or (option.choices and value not in option.choices):
            allowed = f" (one of {', '.join(option.choices)})" if option.choices else ""
            raise ConfigError(f"{where} must be a string{allowed}")
        return value
    try:
        return _NUMBER_PARSERS[option.kind](value)
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def positive_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("must be a number of seconds")
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return seconds


def positive_count(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError("must be a whole number")
    count = int(value)
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {value}")
    return count


def port_number(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError("must be a whole number")
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return port


def score_value(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("must be a score from 0 to 100")
    score = float(value)
    if not 0 <= score <= 100:
        raise argparse.ArgumentTypeError(f"must be a score from 0 to 100, got {value}")
    return score


def model_rule(value: str) -> tuple[str, Path]:
    """``KEY=FILE`` (a camera key or a sub-folder, and the model file that scores it)."""
    key, sep, path = value.rpartition("=")
    if not sep or not key.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=FILE, got {value!r}")
    return key.strip(), Path(path.strip())


def split_command(value: str) -> list[str]:
    """A command line given as one string, split as a POSIX shell would split it (nothing else of a shell)."""
    argv = shlex.split(value)
    if not argv:
        raise argparse.ArgumentTypeError("the command is empty")
    return argv


_NUMBER_PARSERS = {"seconds": positive_seconds, "count": positive_count, "port": port_number, "score": score_value}
