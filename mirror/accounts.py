"""The access commands of `weightswarm mirror` (mounted by mirror/cli.py): `token add`,
`token list`, `token revoke` edit `[mirror] access_file` (mirror/access.py reads it); `access`
sets a repo's access in the catalog.

The file is edited with tomlkit, so an operator's comments and layout stay as they were; each
edit is checked by the same parser the mirror uses before it is written, whole, by rename
(a running mirror reads it again at its next request), under a lock that orders the writers.
A YAML access file is the operator's own to edit: the commands print the entry instead.
"""

from __future__ import annotations

import datetime
import fnmatch
import time
from pathlib import Path

import click
import tomlkit

from peer import atomic
from peer.errors import BadRequest, ConfigError

from .access import Token, load, new_token, parse, token_sha256

#: the access file holds hashes, never tokens; still, only its owner need read it
MODE = 0o600


def _edit(path: Path, change) -> object:
    """`change(document)` on the access file's TOML document, checked, then written whole."""
    if path.suffix in (".yaml", ".yml"):
        raise ConfigError(f"{path} is YAML: `mirror token` edits TOML access files; edit it "
                          f"yourself, or point [mirror] access_file at a .toml file")
    with atomic.locked(path.with_name(path.name + ".lock")):
        try:
            text = path.read_text("utf-8") if path.exists() else ""
            document = tomlkit.parse(text)
        except (OSError, UnicodeDecodeError, tomlkit.exceptions.ParseError) as e:
            raise ConfigError(f"{path}: cannot be edited: {e}") from None
        result = change(document)
        try:
            parse(document.unwrap())
        except ValueError as e:
            raise ConfigError(f"{path}: the change would make it invalid: {e}") from None
        atomic.write_file(path, tomlkit.dumps(document).encode(), mode=MODE)
    return result


def add_token(path: Path, user: str, *, read: list[str], admin: list[str],
              expires: float | None, name: str = "") -> str:
    """A new token for `user` (made a user if it is not one yet): returned, never stored."""
    token = new_token()

    def change(document) -> None:
        users = document.setdefault("users", tomlkit.table())
        if user not in users:
            users[user] = tomlkit.table()
        entry = tomlkit.table()
        entry["user"] = user
        if name:
            entry["name"] = name
        entry["sha256"] = token_sha256(token)
        entry["created"] = _iso(time.time())
        if expires is not None:
            entry["expires"] = _iso(expires)
        entry["read"] = read
        entry["admin"] = admin
        tokens = document.setdefault("tokens", tomlkit.aot())
        tokens.append(entry)

    _edit(path, change)
    return token


def revoke(path: Path, what: str) -> list[dict]:
    """Remove the tokens `what` names: a token itself, a user (all of theirs), or the start
    of a token's sha256 (8 hex at least, as `token list` shows). Returns those removed."""
    what = what.strip()

    def names(entry) -> bool:
        digest = str(entry.get("sha256", ""))
        return (what == str(entry.get("user"))
                or (what.startswith("ws_") and token_sha256(what) == digest)
                or (len(what) >= 8 and digest.startswith(what.lower())))

    def change(document) -> list[dict]:
        tokens = document.get("tokens", [])
        gone = [e.unwrap() for e in tokens if names(e)]
        if not gone:
            raise BadRequest(f"no token in {path} is {what[:80]!r} (a token, a user, or the "
                             f"start of a sha256 as `mirror token list` shows it)")
        kept = tomlkit.aot()
        for entry in tokens:
            if not names(entry):
                kept.append(entry)
        document["tokens"] = kept
        return gone

    return _edit(path, change)


def _iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _expires(text: str | None) -> float | None:
    """`30d`, `12h`, `2027-06-30`, `2027-06-30T12:00:00Z`: when a new token stops working."""
    if not text:
        return None
    if text[:-1].isdigit() and text[-1] in "dh":
        return time.time() + int(text[:-1]) * (86400 if text[-1] == "d" else 3600)
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not like 30d, 12h or 2027-06-30") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _path(state) -> Path:
    path = state.config().access_path
    if path is None:
        raise ConfigError("no access file: set [mirror] access_file (e.g. access.toml, beside "
                          "the catalog) and run this again")
    return path


@click.group("token")
def token() -> None:
    """Tokens of the access file: who may read gated and private repos."""


@token.command("add")
@click.argument("user")
@click.option("--read", "read", multiple=True, metavar="GLOB",
              help="repos (globs) the token may read, on top of the user's groups")
@click.option("--admin", "admin", multiple=True, metavar="GLOB",
              help="repos (globs) the token administers: it also takes their quarantined files")
@click.option("--expires", help="30d, 12h, or a date (2027-06-30); default: never")
@click.option("--name", default="", help="what whoami and `token list` call it")
@click.pass_obj
def token_add(state, user: str, read, admin, expires, name) -> None:
    """Make a token for USER and print it, once: only its hash is kept."""
    path = _path(state)
    new = add_token(path, user, read=list(read), admin=list(admin), expires=_expires(expires),
                    name=name)
    click.echo(new)
    click.echo(f"token for {user} ({token_sha256(new)[:12]}) added to {path}; use it as "
               f"HF_TOKEN against this mirror. It is not shown again.", err=True)


@token.command("list")
@click.pass_obj
def token_list(state) -> None:
    """The tokens of the access file: user, hash prefix, name, expiry, rights."""
    now = time.time()
    rules = load(_path(state))
    tokens: list[Token] = sorted(rules.tokens.values(), key=lambda t: (t.user, t.sha256))
    for t in tokens:
        expiry = "never" if t.expires is None else _iso(t.expires)
        if t.expires is not None and t.expires <= now:
            expiry += " (expired)"
        click.echo(f"{t.user:<20} {t.sha256[:12]}  {t.name or '-':<16} expires {expiry:<32} "
                   f"read {','.join(t.read) or '-'}  admin {','.join(t.admin) or '-'}")
    click.echo(f"tokens: {len(tokens)}", err=True)


@token.command("revoke")
@click.argument("what")
@click.pass_obj
def token_revoke(state, what: str) -> None:
    """Remove a token (the token, its user, or its hash prefix); a running mirror refuses it
    at its next request."""
    gone = revoke(_path(state), what)
    for entry in gone:
        click.echo(f"revoked {entry.get('user')} {str(entry.get('sha256'))[:12]}")


@click.command("access")
@click.argument("glob", required=False)
@click.argument("level", required=False, type=click.Choice(["public", "gated", "private"]))
@click.pass_obj
def access(state, glob: str | None, level: str | None) -> None:
    """Set the access of the repos GLOB matches (an id, or a glob like org/*), now and for
    those published later; without LEVEL, show it; without arguments, the rules set."""
    from .catalog import Catalog

    catalog = Catalog(state.config().catalog_path)
    try:
        if glob is None:
            for rule, value, when in catalog.access_rules():
                click.echo(f"{rule:<48} {value:<8} set {_iso(when)}")
            return
        if level is None:
            for repo in catalog.repos():
                if fnmatch.fnmatchcase(repo.repo_id, glob):
                    click.echo(f"{repo.hub:<12} {repo.type:<8} {repo.repo_id:<48} {repo.access}")
            return
        changed = catalog.set_access(glob, level)
        for repo in changed:
            click.echo(f"{repo.repo_id}: {repo.access} -> {level}")
        click.echo(f"{glob}: {level} ({len(changed)} repos changed; repos published later "
                   f"under it are {level} too)")
    finally:
        catalog.close()


COMMANDS = (token, access)
