"""Bundles: chosen snapshots carried on removable media to a mirror that never touches the
network (DESIGN.md section 4, flow 7; issue 15).

A bundle is a folder of numbered volume folders (`vol-001/`, `vol-002/`, ...), each small
enough for its medium and each standing alone:

    vol-001/index.msgpack                   the signed index (the same bytes in every volume)
    vol-001/snapshots/ab/<sha256>.msgpack   every snapshot's signed manifest, by its sha256
    vol-001/blobs/ab/<sha256>               whole blobs
    vol-001/parts/<sha256>.001              parts of a blob split across volumes
    vol-001/VOLUME                          the volume's number (its folder may be renamed)

The index (msgpack, signed by the exporting mirror's ed25519 key) lists every blob with its
size, sha256, blake3, LFS flag and where its bytes are (a volume and a file, or several parts
with their own blake3), every snapshot (where its manifest is, its signed ref statements, its
access and title), the volumes (and the parity files each holds, once mirror/parity.py writes
them), and the base: what the far side was known to hold, for an incremental bundle.

The index is written into each volume last, after every other file of the bundle is in place
and fsynced: a volume without one is a cut-off export, never mistaken for a complete one, and
the export continues when run again.

Modules: `index` (the pure format: layout, encoding, validation of what comes from outside),
`select` (which snapshots the specs name), `state` (what a far side holds: export-state files
and earlier bundles), `export`, `reading` (finding and checking volumes: verify-bundle),
`importing` (import-bundle), `commands` (the CLI).
"""
