"""Where quantize and export may write: an `--out` folder replaces only this tool's own earlier artefact.

`check_output_folder(out, kind, sources, overwrite, own_problem)` is called before any work. Rules:
  * never, not even with `overwrite`: an empty path; the filesystem root; a home folder or a folder that contains
    one; the current folder or a folder that contains it; a source folder (the model being read) or a folder that
    contains it; a symbolic link; an existing file or other non-folder (a file is never turned into a folder);
  * replaced: a missing path, an empty folder, or a folder holding exactly an earlier artefact of the same kind
    (`own_problem(folder)` is None: for a checkpoint, its manifest.json lists every file in the folder; for an
    export, its edgeawq_export.json does);
  * anything else (a folder of the user's files, an artefact with extra files beside it, an artefact of another
    kind) is refused unless `overwrite`, then replaced.
Every refusal is a UserError naming the path and what to do.
"""
from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Callable, Iterable

from ..errors import UserError


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _home_folders() -> set[Path]:
    homes = {_real(Path.home())}
    try:
        homes |= {_real(Path(p.pw_dir)) for p in pwd.getpwall() if p.pw_dir not in ("", "/")}
    except OSError:
        pass
    return homes


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def folder_files(folder: Path) -> set[str]:
    """Relative POSIX paths of every file below `folder` (symbolic links and other non-folders included)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() or p.is_symlink()}


def check_output_folder(out: str | Path | None, kind: str, sources: Iterable[Path], overwrite: bool,
                        own_problem: Callable[[Path], str | None], flag: str = "--out") -> Path:
    """The absolute path to write `kind` ("checkpoint" or "export") to, after checking the rules above."""
    if out is None or str(out).strip() == "":
        raise UserError(f"{flag} is empty.", f"Pass {flag} NEW_FOLDER, a folder that does not exist yet.")
    path = Path(out).expanduser().absolute()
    if path.is_symlink():
        raise UserError(f"{flag} {path} is a symbolic link; this tool does not replace links or what they point to.",
                        f"Pass the real folder, or a new path, to {flag}.")
    real = _real(path)
    protected = [(Path("/"), "the filesystem root")]
    protected += [(h, "a home folder") for h in sorted(_home_folders())]
    protected.append((_real(Path.cwd()), "the current folder"))
    protected += [(_real(Path(s)), f"the source model {_real(Path(s))}") for s in sources]
    for place, what in protected:
        if _contains(real, place):
            where = "is" if real == place else "contains"
            raise UserError(f"{flag} {path} {where} {what}; writing the {kind} there would replace it.",
                            f"Pass {flag} NEW_FOLDER, a folder of its own (for example runs/my-{kind}).")
    if not path.exists():
        return path
    if not path.is_dir():
        raise UserError(f"{flag} {path} exists and is a file, not a folder; this tool never turns a file into a "
                        f"folder, not even with --overwrite.",
                        f"Pass {flag} with a new folder path, or move the file away first.")
    if not any(path.iterdir()):
        return path
    problem = own_problem(path)
    if problem is None:
        return path
    if overwrite:
        return path
    raise UserError(f"{flag} {path} is a folder that is not an earlier {kind} of this tool ({problem}); writing "
                    f"there would delete what it holds.",
                    f"Pass {flag} with a new folder, remove the folder yourself, or add --overwrite to replace it.")


def check_output_file(path: str | Path | None, flag: str, what: str, is_own: Callable[[Path], bool],
                      overwrite: bool = False) -> Path | None:
    """The absolute path to write a result file to (None when `path` is None). Refused: an empty path, a folder, a
    symbolic link, and an existing file that `is_own` does not recognise as an earlier `what` of this tool (unless
    `overwrite`)."""
    if path is None:
        return None
    if str(path).strip() == "":
        raise UserError(f"{flag} is empty.", f"Pass {flag} FILE.")
    p = Path(path).expanduser().absolute()
    if p.is_symlink():
        raise UserError(f"{flag} {p} is a symbolic link; this tool does not replace links or what they point to.",
                        f"Pass the real file, or a new path, to {flag}.")
    if p.is_dir():
        raise UserError(f"{flag} {p} is a folder; {what} is written to a file.", f"Pass {flag} FOLDER/NAME instead.")
    if p.exists() and not overwrite:
        try:
            own = is_own(p)
        except Exception:  # noqa: BLE001 - whatever the file holds, an unreadable one is not ours
            own = False
        if not own:
            raise UserError(f"{flag} {p} exists and is not an earlier {what} of this tool; writing there would "
                            "replace it.", f"Pass {flag} with a new file name, remove the file, or add --overwrite.")
    return p


def unlisted_files_problem(folder: Path, listed: Iterable[str], record: str) -> str | None:
    """None when every file of `folder` is `record` or one it lists (files it lists may be missing: replacing a
    damaged artefact of this tool loses nothing of the user's); else names the first file that would be lost."""
    extra = sorted(folder_files(folder) - {record} - set(listed))
    if not extra:
        return None
    more = f" (and {len(extra) - 1} more files)" if len(extra) > 1 else ""
    return f"{extra[0]}{more} in it is not part of one"
