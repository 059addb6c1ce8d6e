"""Aliases: old names that keep working. Hubs retire (TensorFlow Hub moved into Kaggle Models,
the ONNX Model Zoo left GitHub for Hugging Face) and repos are renamed; notebooks and scripts
keep the old links. `[mirror] aliases` maps each old name to a repo the mirror holds, and the
mirror answers the old name with a redirect to the new one:

- a repo, written as a sync spec (`hf:old-org/name`, `ms:org/name`, `kaggle:owner/m/fw/var`):
  every HF API call and `resolve` of the old repo is redirected (307) to the same call on the
  new one, as huggingface.co does for a renamed repo, so the stock client follows it;
- a retired URL (`https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/classification/5`,
  `github.com/onnx/models/raw/main/validated/vision/classification/mobilenet`), scheme
  optional: `GET /<host>/<path>` on the mirror (the old URL with `http(s)://` replaced by the
  mirror's base) and `GET /api/weightswarm/aliases?url=<old URL>` redirect (302) to the repo,
  and a longer path under an aliased prefix to that file of the repo.

The target is written as a sync spec too, with an optional revision (`kaggle:google/
mobilenet-v2/tensorFlow2/100-224-classification/5`, `hf:onnx/mobilenet@main`). Pure: the app
does the lookups and answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from peer import hubs
from peer.errors import BadRequest
from peer.hfformat import TYPE_PLURAL, TYPE_URL_PREFIX
from peer.paths import check_repo_path

from .routes import HubCall

#: the most aliases a mirror reads (a file of them is the usual way to give many)
MAX_ALIASES = 100_000
_SPEC_PREFIXES = ("hf:", "hf-datasets:", "ms:", "ms-datasets:", "kaggle:")


@dataclass(frozen=True)
class Target:
    hub: str
    repo_type: str
    repo_id: str
    #: None: the revision the request asked for (a repo alias), or the default branch
    revision: str | None

    def repo_info_path(self) -> str:
        revision = quote(self.revision or "main", safe="")
        return (f"{hubs.prefix(self.hub)}/api/{TYPE_PLURAL[self.repo_type]}/{self.repo_id}/"
                f"revision/{revision}")

    def resolve_path(self, path: str) -> str:
        revision = quote(self.revision or "main", safe="")
        return (f"{hubs.prefix(self.hub)}/{TYPE_URL_PREFIX[self.repo_type]}{self.repo_id}/"
                f"resolve/{revision}/{quote(path)}")


def _target(text: str) -> Target:
    from .sync import parse_spec  # specs are the sync's language

    if not isinstance(text, str) or not text.startswith(_SPEC_PREFIXES):
        raise ValueError(f"{text!r}: an alias names a repo as hf:, ms: or kaggle: does")
    spec = parse_spec(text)
    if spec.is_author:
        raise ValueError(f"{text!r}: an alias names one repo")
    pinned = "@" in text or (spec.kind == "kaggle" and spec.revision != "main")
    return Target(spec.hub, spec.repo_type, spec.repo_id, spec.revision if pinned else None)


def url_key(text: str) -> str:
    """A retired URL as aliases are looked up: no scheme, no query, host in lower case, no
    trailing slash, percent-decoded."""
    text = text.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    path = unquote(parts.path).rstrip("/")
    return f"{parts.netloc.lower()}{path}"


@dataclass(frozen=True)
class Aliases:
    repos: dict  # (hub, type, repo id) → Target
    urls: tuple  # (url key, Target), longest first

    @classmethod
    def parse(cls, table) -> Aliases:
        if not isinstance(table, dict):
            raise ValueError("aliases is a table of old name = \"new repo\" (or a file of one)")
        if len(table) > MAX_ALIASES:
            raise ValueError(f"more than {MAX_ALIASES} aliases")
        repos, urls = {}, []
        for old, new in table.items():
            target = _target(new)
            if str(old).startswith(_SPEC_PREFIXES):
                source = _target(old)
                repos[(source.hub, source.repo_type, source.repo_id)] = target
            else:
                key = url_key(str(old))
                if "." not in key.split("/")[0]:
                    raise ValueError(f"{old!r}: a retired URL starts with its host name")
                urls.append((key, target))
        urls.sort(key=lambda item: -len(item[0]))
        return cls(repos, tuple(urls))

    def for_repo(self, call: HubCall) -> Target | None:
        return self.repos.get((call.hub, call.repo_type, call.repo_id))

    def for_url(self, text: str) -> str | None:
        """The path on this mirror a retired URL now lives at, if an alias covers it."""
        key = url_key(text)
        for prefix, target in self.urls:
            if key == prefix:
                return target.repo_info_path()
            if key.startswith(prefix + "/"):
                rest = key[len(prefix) + 1:]
                try:
                    return target.resolve_path(check_repo_path(rest))
                except BadRequest:
                    return None
        return None

    def __bool__(self) -> bool:
        return bool(self.repos or self.urls)


def redirected(call: HubCall, raw_path: str, target: Target) -> str | None:
    """The same HF API call on the target repo: the raw path with its hub prefix and repo id
    replaced (None when the path does not hold them as expected)."""
    rest = raw_path[len(call.prefix):] if raw_path.startswith(call.prefix) else None
    if rest is None or target.repo_type != call.repo_type:
        return None
    needle = f"/{call.repo_id}/"
    at = rest.find(needle)
    if at < 0:
        if not rest.endswith(f"/{call.repo_id}"):
            return None
        at = len(rest) - len(call.repo_id) - 1
    return (f"{hubs.prefix(target.hub)}{rest[:at]}/{target.repo_id}"
            f"{rest[at + 1 + len(call.repo_id):]}")


def read_aliases(value) -> dict:
    """The `[mirror] aliases` setting: a table, or the path of a TOML or YAML file holding one."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("aliases is a table, or the path of a TOML or YAML file of one")
    path = Path(value).expanduser()
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise ValueError(f"cannot read the aliases file {path}: {e.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        import tomllib

        data = tomllib.loads(text)
        data = data.get("aliases", data)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds no table of aliases")
    return data
