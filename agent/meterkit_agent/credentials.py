"""Secrets: read from private files, found in a configuration, and kept out of every log line.

A secret reaches meterkit from an environment variable or a file, never necessarily from
a command line (``ps`` and ``/proc/<pid>/cmdline`` show every process's arguments to every
user). A secret file must not be readable by other users (``chmod 600``), as ssh and libpq
demand of their key and password files: a token that every user can read authenticates
every user. Its content is the secret, without the line break an editor or ``echo``
leaves at its end.

Logging redacts whatever the process was told is a secret (:func:`redact_logs`): the
message, its arguments and the traceback of every log record, whatever the logger or the
handler, are searched for each secret and show ``***`` instead. This is the last line of
defence, after the first one: no code writes a secret into a message on purpose
(``SecretStr`` prints as ``**********``).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

#: What a redacted secret reads as.
MASK = "***"
#: Shorter strings are not searched for in log lines: they would erase ordinary words, and
#: a secret this short is guessed sooner than it leaks.
MIN_SECRET_LENGTH = 4
#: ``scheme://user:password@host``: the password of a URL (a database's, a proxy's).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s/]+)(?=@)")


class SecretFileError(Exception):
    """A secret file that cannot be used; the message names the file and what to do."""


def read_secret_file(path: str | Path, what: str) -> str:
    """The secret in ``path``, for ``what`` (``--token-file``, ``exporters.m3ter.token_file``).
    Raises :class:`SecretFileError` if it cannot be read, is empty, or other users may
    read or write it."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            raise SecretFileError(
                f"{what}: {p} can be read or written by every user of this machine (mode {stat.S_IMODE(mode):04o});"
                f" make it private first: chmod 600 {p}"
            )
        text = p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretFileError(f"{what}: cannot read {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"{what}: {p} is not UTF-8 text") from None
    if not text:
        raise SecretFileError(f"{what}: {p} is empty")
    return text


def secret_values(value: Any) -> Iterator[str]:
    """Every secret a configuration holds: each ``SecretStr`` in it, at any depth (models,
    mappings, lists), and the password of any URL in it."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from secret_values(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from secret_values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from secret_values(item)
    elif isinstance(value, str):
        yield from (m.group("password") for m in _URL_PASSWORD.finditer(value))


def without_url_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` in it masked."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


class Redactor:
    """The secrets this process must never log, and the log record factory that hides them."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()
        #: the log record factory this one wraps, once installed
        self._previous: Callable[..., logging.LogRecord] | None = None

    def add(self, secrets: Iterable[str | None]) -> None:
        with self._lock:
            found = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH} | set(self._secrets)
            # Longest first: a secret that contains another is masked whole.
            self._secrets = tuple(sorted(found, key=len, reverse=True))
            if self._previous is None:
                self._previous = logging.getLogRecordFactory()
                self._install(self._previous)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return without_url_passwords(text) if "://" in text else text

    def uninstall(self) -> None:
        """Log as before :meth:`add` (for tests)."""
        with self._lock:
            if self._previous is not None:
                logging.setLogRecordFactory(self._previous)
                self._previous, self._secrets = None, ()

    def _install(self, make: Callable[..., logging.LogRecord]) -> None:
        formatter = logging.Formatter()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make(*args, **kwargs)
            # The message is formatted now, once, and what a handler would format later
            # (the arguments, the traceback) is replaced by its redacted text.
            try:
                message = record.getMessage()
            except Exception as exc:  # arguments that do not fit the message: never shown raw
                message = f"{record.msg} (its arguments are not shown: {type(exc).__name__})"
            record.msg, record.args = self.redact(message), None
            if record.exc_info and not record.exc_text:
                record.exc_text = formatter.formatException(record.exc_info)
            if record.exc_text:  # made here, or by a factory this one wraps
                record.exc_text = self.redact(record.exc_text)
            if record.stack_info:
                record.stack_info = self.redact(record.stack_info)
            return record

        logging.setLogRecordFactory(factory)


#: The process's redactor: every secret it is told of, for as long as it runs.
REDACTOR = Redactor()


def redact_logs(secrets: Iterable[str | None]) -> None:
    """Keep ``secrets`` out of every log line this process writes from now on."""
    REDACTOR.add(secrets)


def command_line_warning(option: str, instead: str) -> str:
    """The warning printed when a secret was given as ``option`` on the command line."""
    return (
        f"warning: {option} on the command line is visible to every user of this machine (ps,"
        f" /proc/<pid>/cmdline) and stays in shell history; use {instead} instead"
    )


def private_key_problem(path: Path) -> str | None:
    """Why a TLS private key file cannot be used, or None."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        return f"{path} can be read or written by every user of this machine; make it private: chmod 600 {path}"
    if not os.access(path, os.R_OK):
        return f"cannot read {path}: permission denied"
    return None


def redacted(cfg: BaseModel) -> dict[str, Any]:
    """What an agent configuration (:class:`.config.AgentConfig`) resolved to, as plain
    data, each secret (and each URL's password) shown as ``***``: safe to print
    (``meterkit agent validate-config``)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, SecretStr):
            return MASK
        return without_url_passwords(value) if isinstance(value, str) else value

    doc: dict[str, Any] = {}
    for kind in ("receivers", "processors", "exporters", "extensions"):
        section = getattr(cfg, kind)
        if section:
            doc[kind] = {cid: clean(model.model_dump(mode="python")) for cid, model in section.items()}
    doc["service"] = clean(getattr(cfg, "service").model_dump(mode="python"))  # noqa: B009 - any config model
    plain: dict[str, Any] = _plain(doc)
    return plain


def _plain(value: Any) -> Any:
    """Paths and other objects as their text, for printing."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def shown_url(url: str) -> str:
    """``url`` as it may be printed or logged: without a ``user:password@`` part."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(a URL that does not parse)"
    if "@" not in parts.netloc:
        return url
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=netloc))
