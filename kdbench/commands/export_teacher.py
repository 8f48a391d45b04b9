"""``kdbench export-teacher SPEC``: a trained teacher as a portable checkpoint.

The teacher comes from a teacher cache (a run folder's teachers/ or the
folder given to --teacher-cache), found by what determines it: the spec's
data and [teacher] sections, the backend, the seed and the settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kdbench.checkpoint import save_teacher, teacher_content_hash
from kdbench.commands.common import console
from kdbench.errors import KdbenchError
from kdbench.harness.teacher_cache import load_cached_teacher, teacher_key
from kdbench.runner.folder import TEACHERS_DIR
from kdbench.settings import add_setting_flags, resolve_settings, settings_from_args
from kdbench.spec import load_spec


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export-teacher", help="write a trained teacher as a portable checkpoint (safetensors)"
    )
    p.add_argument("spec", help="the spec the teacher was trained for (name or .toml)")
    p.add_argument("--backend", required=True, help="the backend that trained it")
    p.add_argument("--seed", type=int, default=0, help="its seed (default 0)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="a run folder (its teachers/ cache)")
    where.add_argument("--teacher-cache", help="a teacher cache folder")
    p.add_argument("--out", required=True, help="the checkpoint file to write (.safetensors)")
    add_setting_flags(p)
    return p


def run(args: argparse.Namespace) -> int:
    loaded = load_spec(args.spec)
    cache = Path(args.teacher_cache) if args.teacher_cache else Path(args.run) / TEACHERS_DIR
    settings = resolve_settings(
        loaded.spec.measure.settings().as_dict(), settings_from_args(args)
    ).resolved()
    key = teacher_key(loaded, args.backend, args.seed, settings)
    found = load_cached_teacher(cache, key)
    if found is None:
        near = sorted(p.stem for p in cache.glob(f"{args.backend}-seed{args.seed}-*.npz"))
        hint = f"; the cache holds {', '.join(near)} (other settings?)" if near else ""
        raise KdbenchError(
            f"no {args.backend} teacher of seed {args.seed} for {loaded.name} in {cache} "
            f"(key {key}){hint}"
        )
    spec = loaded.spec
    origin = {
        "backend": args.backend,
        "seed": args.seed,
        "spec": spec.name,
        "spec_hash": loaded.content_hash,
        "teacher_hash": teacher_content_hash(
            spec.data.model_dump(mode="json"), spec.teacher.model_dump(mode="json")
        ),
        "cache_key": key,
    }
    save_teacher(Path(args.out), found[0], loaded.teacher_arch, origin)
    console.print(
        f"{args.out}: {loaded.teacher_arch.name} teacher of {spec.name}, "
        f"{args.backend} seed {args.seed}"
    )
    return 0
