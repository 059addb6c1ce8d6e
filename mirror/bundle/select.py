"""Which snapshots an export carries: specs as `weightswarm mirror sync` takes them, read
against this mirror's catalog instead of an upstream.

`hf:org/name@rev` carries that revision; `hf:org/name` (no revision) carries every ref of the
repo, branches and tags, since a bundle is what a site will have and a sync's "follow main"
has no meaning across a gap; `hf:org/*` does so for every repo of that author held here;
`--all` for every repo. `hf-datasets:`, `ms:`, `ms-datasets:` and `kaggle:` name the other
hubs and types (DESIGN.md section 8).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peer import hubs
from peer.errors import BadRequest

from ..catalog import Catalog, Ref, Repo, ref_of
from ..sync import parse_spec

#: spec prefix → (hub, repo type)
PREFIXES = {
    "hf": (hubs.HUGGINGFACE, "model"), "hf-datasets": (hubs.HUGGINGFACE, "dataset"),
    "ms": (hubs.MODELSCOPE, "model"), "ms-datasets": (hubs.MODELSCOPE, "dataset"),
    "kaggle": (hubs.KAGGLE, "model"),
}
_FULL = {"branch": "refs/heads/", "tag": "refs/tags/", "pr": "refs/pr/",
         "convert": "refs/convert/"}


@dataclass(frozen=True)
class ExportSpec:
    hub: str
    type: str
    repo_id: str  # may be "org/*"
    revision: str | None  # None: every ref


def parse_export_spec(text: str) -> ExportSpec:
    kind, sep, rest = text.strip().partition(":")
    if not sep or kind not in PREFIXES:
        raise BadRequest(f"{text!r}: an export spec starts with "
                         f"{', '.join(p + ':' for p in PREFIXES)}")
    hub, repo_type = PREFIXES[kind]
    # The sync's own checks of the id and revision (it knows hf: and hf-datasets: only).
    checked = parse_spec(("hf-datasets:" if repo_type == "dataset" else "hf:") + rest)
    return ExportSpec(hub, repo_type, checked.repo_id, checked.revision if "@" in rest else None)


def full_ref(ref: Ref) -> str:
    """A ref as a ref statement in a bundle names it: in full, so a tag stays a tag."""
    return _FULL[ref.kind] + ref.name


@dataclass
class Chosen:
    """A snapshot to carry, and the refs of it that move with it."""

    repo: Repo
    commit: str
    refs: list[Ref] = field(default_factory=list)


def _whole(catalog: Catalog, repo: Repo) -> list[tuple[str, Ref | None]]:
    refs = catalog.refs(repo)
    if refs:
        return [(r.commit, r) for r in refs]
    return [(c, None) for c in catalog.snapshots(repo)]


def _revision(catalog: Catalog, repo: Repo, revision: str) -> list[tuple[str, Ref | None]]:
    commit = catalog.resolve(repo, revision)
    kind, name = ref_of(revision)
    for ref in catalog.refs(repo):
        if ref.name == name and (ref.kind == kind or kind == "branch") and ref.commit == commit:
            return [(commit, ref)]
    return [(commit, None)]


def _repos(catalog: Catalog, spec: ExportSpec) -> list[Repo]:
    if not spec.repo_id.endswith("/*"):
        return [catalog.repo(spec.hub, spec.type, spec.repo_id)]
    author = spec.repo_id[:-1]
    found = [r for r in catalog.repos(spec.hub)
             if r.type == spec.type and r.repo_id.startswith(author)]
    if not found:
        raise BadRequest(f"this mirror holds no {spec.type} of {author[:-1]} on {spec.hub}")
    return found


def choose(catalog: Catalog, specs: list[ExportSpec], *, everything: bool = False,
           include_private: bool = False) -> list[Chosen]:
    """The snapshots to carry, in a stable order (hub, type, repo, then the catalog's).
    Private repos only with `include_private`: `--all` and globs leave them out, and one
    named is refused (a bundle travels on media anyone may pick up)."""
    chosen: dict[tuple[int, str], Chosen] = {}
    pairs: list[tuple[Repo, str, Ref | None]] = []
    if everything:
        pairs += [(repo, c, r) for repo in catalog.repos()
                  if include_private or repo.access != "private"
                  for c, r in _whole(catalog, repo)]
    for spec in specs:
        for repo in _repos(catalog, spec):
            if repo.access == "private" and not include_private:
                if not spec.repo_id.endswith("/*"):
                    raise BadRequest(f"{repo.repo_id} is private: a bundle carries it only "
                                     f"with --include-private")
                continue
            found = (_whole(catalog, repo) if spec.revision is None
                     else _revision(catalog, repo, spec.revision))
            pairs += [(repo, c, r) for c, r in found]
    if not pairs:
        raise BadRequest("nothing to export: name repos (SPEC...) or --all")
    for repo, commit, ref in pairs:
        entry = chosen.setdefault((repo.id, commit), Chosen(repo, commit))
        if ref is not None and ref not in entry.refs:
            entry.refs.append(ref)
    order = {c: i for repo in {p[0].id: p[0] for p in pairs}.values()
             for i, c in enumerate(catalog.snapshots(repo))}
    return sorted(chosen.values(), key=lambda c: (c.repo.hub, c.repo.type, c.repo.repo_id,
                                                   order.get(c.commit, 0)))
