"""The projector interface: every projector maps vision features (B, N, d) to LLM tokens (B, M, c).

A projector names itself where it is defined (`class MSResampler(Projector, name="ms_resampler")`)
and is then buildable by that name (`msr.projectors.registry`). Its module needs only torch and its
sibling modules, so the same source runs inside an exported model (`msr export --format
remote-code`) where msr is not installed.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from msr.projectors.grid import Grid, resolve_grid

PROJECTORS: dict[str, type[Projector]] = {}  # name -> class, as each projector module is imported


def register(cls: type[Projector], name: str) -> None:
    """Make `cls` buildable as `name`; a name taken by another class is an error."""
    if name in PROJECTORS and PROJECTORS[name] is not cls:
        raise ValueError(f"projector {name!r} is registered twice ({PROJECTORS[name]} and {cls})")
    cls.name = name
    PROJECTORS[name] = cls


class Projector(nn.Module):
    """Base class. Subclasses take typed keyword options and implement `forward` and `analytic_macs`.

    `grid` fixes the (H, W) patch grid; left as None it is inferred from N at every forward (square).
    """

    name: ClassVar[str] = ""
    keeps_all_tokens: ClassVar[bool] = False  # True when the design outputs all N tokens (M = N)

    def __init_subclass__(cls, name: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            register(cls, name)

    def __init__(
        self, *, vision_dim: int, llm_dim: int, num_queries: int, grid: Grid | None = None
    ) -> None:
        super().__init__()
        for key, value in (
            ("vision_dim", vision_dim),
            ("llm_dim", llm_dim),
            ("num_queries", num_queries),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.name}: {key} must be a positive integer, got {value!r}")
        if grid is not None and (len(grid) != 2 or min(grid) < 1):
            raise ValueError(f"{self.name}: grid must be (H, W) of positive integers, got {grid!r}")
        self.vision_dim = vision_dim
        self.llm_dim = llm_dim
        self.num_queries = num_queries
        self.grid: Grid | None = (int(grid[0]), int(grid[1])) if grid is not None else None

    @property
    def input_dim(self) -> int:
        """Channels the forward expects in its last dimension."""
        return self.vision_dim

    def input_grid(self, x: Tensor) -> Grid:
        """Check x is (B, N, input_dim) and return its (H, W)."""
        if x.ndim != 3:
            raise ValueError(
                f"{self.name}: expected features (B, N, d), got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.input_dim:
            raise ValueError(
                f"{self.name}: expected feature width d={self.input_dim}, got {x.shape[-1]} "
                f"(shape {tuple(x.shape)})"
            )
        return resolve_grid(x.shape[1], self.grid)

    def analytic_macs(self, batch: int, grid: Grid) -> int:
        """Multiply-accumulates of matmuls and convs of one forward on `batch` images (closed form)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"vision_dim={self.vision_dim}, llm_dim={self.llm_dim}, num_queries={self.num_queries}"
        )
