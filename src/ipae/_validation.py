"""The checks of arguments that many public entry points share, each written once with one wording."""

from __future__ import annotations

__all__: list[str] = []  # internal


def check_positive_int(name: str, value: object, *, or_none: bool | str = False) -> None:
    """ValueError unless `value` is an int >= 1 (a bool is not one); with `or_none`, None passes too, and
    a string there says what None means: "n_partners must be an integer >= 1 or None (all pairs), got 0"."""
    if value is None and or_none is not False:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        alternative = "" if or_none is False else " or None" + (f" ({or_none})" if isinstance(or_none, str) else "")
        raise ValueError(f"{name} must be an integer >= 1{alternative}, got {value!r}")


def check_positive_ints(name: str, values: object) -> None:
    """ValueError unless `values` is a non-empty sequence of ints >= 1, such as layer sizes."""
    if not isinstance(values, (tuple, list)) or not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of integers >= 1, got {values!r}")
