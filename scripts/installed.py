"""Exit 0 when this checkout is the installed hftrain and every requirement (with the given extras) is satisfied.

scripts/install.sh asks this first, so running a script again on a machine that has everything calls no pip (and
needs no network: `pip install -e .` would build in an isolated environment fetched from the index).
Usage: python scripts/installed.py [EXTRAS]   (e.g. dev)
"""

import os
import sys
from importlib import metadata


def missing(extras: set, pyproject: str) -> list:
    """The requirements in `pyproject` (with `extras`) that are not installed at an allowed version. Read from the
    checkout, not from the installed metadata, which is stale once pyproject.toml gains a dependency."""
    import tomllib  # Python 3.11+; on 3.10 the ImportError lets pip decide
    from packaging.requirements import Requirement

    with open(pyproject, "rb") as handle:
        project = tomllib.load(handle)["project"]
    texts = list(project.get("dependencies", []))
    for extra in extras:
        texts += project.get("optional-dependencies", {}).get(extra, [])
    absent = []
    for requirement in map(Requirement, texts):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            absent.append(requirement.name)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            absent.append(f"{requirement.name} {version} (wants {requirement.specifier})")
    return absent


def main() -> int:
    extras = {e for e in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if e}
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        import hftrain

        if not os.path.abspath(hftrain.__file__).startswith(os.path.join(here, "hftrain")):
            return 1  # another copy of hftrain is installed: install this checkout
        return 1 if missing(extras, os.path.join(here, "pyproject.toml")) else 0
    except Exception:  # not installed, no packaging, unreadable metadata: let pip decide
        return 1


if __name__ == "__main__":
    sys.exit(main())
