"""A Fedora-sized dist-git owner map, and a realistic day's worth of changes to it.

:func:`owner_map` writes the ownership of :func:`fmn.generate.generate_preferences`
(about 25,000 rpms plus containers, modules and flatpaks; one maintainer for
most packages, up to ten for the popular ones, special-interest groups on a
share of them) in dist-git's ``pagure_owner_alias.json`` shape, so that the
owners are the generated users.  :func:`day_of_changes` applies what one day
in dist-git looks like: by default 15 new packages, 5 retired, 40 maintainers
added, 20 removed and 5 group ownership changes (a quiet weekday is less, a
mass retirement more).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from fmn.generate import generate_preferences
from fmn.ownership.sources import NAMESPACE_OF


def owner_map(users: int = 10_000, seed: int = 1) -> dict[str, dict[str, list[str]]]:
    prefs = generate_preferences(users, seed)
    return {NAMESPACE_OF[atype]: {name: [*o.users, *(f"@{g}" for g in o.groups)]
                                  for name, o in names.items()}
            for atype, names in prefs.owners.items()}


@dataclass(frozen=True)
class Churn:
    new: int = 15
    retired: int = 5
    added: int = 40
    removed: int = 20
    groups: int = 5


def day_of_changes(doc: dict[str, dict[str, list[str]]], seed: int = 1,
                   churn: Churn = Churn()) -> dict[str, Any]:
    """A copy of ``doc`` after one day of changes (rpms only, as most changes are)."""
    rng = random.Random(seed)
    out = {ns: {name: list(m) for name, m in names.items()} for ns, names in doc.items()}
    rpms = out["rpms"]
    names = sorted(rpms)
    people = sorted({m for ms in rpms.values() for m in ms if not m.startswith("@")})
    groups = sorted({m for ms in rpms.values() for m in ms if m.startswith("@")})
    for name in rng.sample(names, churn.retired):
        del rpms[name]
    names = sorted(rpms)
    for i in range(churn.new):
        rpms[f"python-newpkg{seed}-{i}"] = [rng.choice(people)]
    for name in rng.sample(names, churn.added):
        candidate = rng.choice(people)
        if candidate not in rpms[name]:
            rpms[name].append(candidate)
    for name in rng.sample(names, churn.removed):
        users = [m for m in rpms[name] if not m.startswith("@")]
        if len(users) > 1:
            rpms[name].remove(rng.choice(users))
    for name in rng.sample(names, churn.groups):
        if groups:
            group = rng.choice(groups)
            if group in rpms[name]:
                rpms[name].remove(group)
            else:
                rpms[name].append(group)
    return out
