"""Age-group schemes as data.

A scheme is an ordered list of lower age bounds: group ``i`` holds ages in
``[lower[i], lower[i + 1] - 1]`` and the last group is open-ended (``70+``). Every published face-aging
method uses its own grouping; they are all just different edges here, so no code path depends on a
scheme's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Width assumed for the open-ended last group when picking its representative age.
_OPEN_GROUP_SPAN = 10


@dataclass(frozen=True)
class AgeScheme:
    """Maps an age in years to a group index, a group to its label and representative age, and back."""

    name: str
    lower: tuple[int, ...]

    def __post_init__(self) -> None:
        lower = tuple(int(v) for v in self.lower)
        if len(lower) < 2:
            raise ValueError(f"age scheme {self.name!r} needs at least two groups, got edges {lower}")
        if lower[0] != 0 or any(b <= a for a, b in zip(lower, lower[1:], strict=False)):
            raise ValueError(f"age scheme {self.name!r}: edges must start at 0 and strictly increase, got {lower}")
        object.__setattr__(self, "lower", lower)

    @property
    def num_groups(self) -> int:
        return len(self.lower)

    @property
    def labels(self) -> list[str]:
        return [self.label(g) for g in range(self.num_groups)]

    def group(self, age: float) -> int:
        """Group index of an age in years (negative ages are an error, any age above the top is the top)."""
        if age < 0:
            raise ValueError(f"age must be >= 0, got {age}")
        g = 0
        while g + 1 < self.num_groups and age >= self.lower[g + 1]:
            g += 1
        return g

    def bounds(self, group: int) -> tuple[int, int | None]:
        """Inclusive ``(low, high)`` ages of a group; ``high`` is None for the open last group."""
        self._check(group)
        high = self.lower[group + 1] - 1 if group + 1 < self.num_groups else None
        return self.lower[group], high

    def label(self, group: int) -> str:
        low, high = self.bounds(group)
        if high is None:
            return f"{low}+"
        return f"{low}-{high}"

    def representative_age(self, group: int) -> float:
        """The age a group stands for: its midpoint, or a few years past the bound of the open group."""
        low, high = self.bounds(group)
        if high is None:
            return low + _OPEN_GROUP_SPAN / 2
        return (low + high) / 2

    def position(self, age: float) -> float:
        """The continuous group coordinate of an age in years: piecewise linear between the groups'
        representative ages, so 37 in ``ffhq10`` (30-39 stands for 34.5, 40-49 for 44.5) is 6.25.

        Ages below the first group's or above the last group's representative age clamp to 0 or
        ``num_groups - 1``. A generator conditioned on a float position interpolates between the two
        neighbouring groups (see :func:`faceage.nn.layers.two_hot`)."""
        if age < 0:
            raise ValueError(f"age must be >= 0, got {age}")
        reps = [self.representative_age(g) for g in range(self.num_groups)]
        if age <= reps[0]:
            return 0.0
        for g in range(self.num_groups - 1):
            if age <= reps[g + 1]:
                return g + (age - reps[g]) / (reps[g + 1] - reps[g])
        return float(self.num_groups - 1)

    def age_at(self, position: float) -> float:
        """The age in years a continuous group coordinate stands for (the inverse of :meth:`position`)."""
        if not 0 <= position <= self.num_groups - 1:
            raise ValueError(f"position must be in [0, {self.num_groups - 1}], got {position}")
        g = min(int(position), self.num_groups - 2)
        low, high = self.representative_age(g), self.representative_age(g + 1)
        return low + (position - g) * (high - low)

    def parse_position(self, target: float | str) -> float:
        """Continuous group coordinate of an age (``37``, ``"37.5"``: :meth:`position`) or of a group label
        (``"30-39"``: that group's index, exactly)."""
        if isinstance(target, int | float) and not isinstance(target, bool):
            return self.position(float(target))
        text = str(target).strip()
        if text in self.labels:
            return float(self.labels.index(text))
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return self.position(float(text))
        raise ValueError(
            f"{target!r} is neither an age in years nor a group of scheme {self.name!r}; "
            f"groups: {', '.join(self.labels)}"
        )

    def parse(self, target: int | str) -> int:
        """Group index of an age (``70``, ``"70"``) or a group label (``"30-39"``, ``"70+"``)."""
        if isinstance(target, int | float) and not isinstance(target, bool):
            return self.group(target)
        text = str(target).strip()
        if text in self.labels:
            return self.labels.index(text)
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return self.group(float(text))
        raise ValueError(
            f"{target!r} is neither an age in years nor a group of scheme {self.name!r}; "
            f"groups: {', '.join(self.labels)}"
        )

    def to_dict(self) -> dict:
        return {"name": self.name, "lower": list(self.lower)}

    @classmethod
    def from_dict(cls, d: dict) -> AgeScheme:
        return cls(d["name"], tuple(d["lower"]))

    def _check(self, group: int) -> None:
        if not 0 <= group < self.num_groups:
            raise IndexError(f"group {group} out of range for scheme {self.name!r} ({self.num_groups} groups)")


SCHEMES: dict[str, AgeScheme] = {
    s.name: s
    for s in [
        AgeScheme("ffhq10", (0, 3, 7, 10, 15, 20, 30, 40, 50, 70)),
        AgeScheme("agecgan6", (0, 19, 30, 40, 50, 60)),
        AgeScheme("acgan5", (0, 21, 31, 41, 51)),
        AgeScheme("caae10", (0, 6, 11, 16, 21, 31, 41, 51, 61, 71)),
        AgeScheme("utk14", (0, 6, 11, 16, 21, 26, 31, 41, 51, 61, 71, 81, 91, 101)),
    ]
}


def get_scheme(spec: str) -> AgeScheme:
    """A named scheme (``ffhq10``) or custom lower edges (``"0,20,40,60"``)."""
    spec = spec.strip()
    if spec in SCHEMES:
        return SCHEMES[spec]
    if re.fullmatch(r"\d+(\s*,\s*\d+)+", spec):
        edges = tuple(int(v) for v in spec.split(","))
        return AgeScheme(f"custom:{','.join(map(str, edges))}", edges)
    raise ValueError(f"unknown age scheme {spec!r}; known: {', '.join(SCHEMES)}, or lower edges like '0,20,40,60'")
