"""The left–right views a synthesis can run: plain, averaged with its mirror (flip TTA), or mirrored.

Each runner (the FCN's tiles, the U-Net's frame) mirrors inside its own input window, so a mirrored pass sees
exactly the mirror image of the plain pass's window. Mirroring the whole volume first would not: a U-Net frame is the
brain box rounded up to the downsampling, which cannot sit symmetrically around a box of odd width, so the mirrored
volume's frame lands one voxel off the mirror of the plain frame and the strided network answers differently.
"""

from __future__ import annotations

import enum

import torch

from .errors import UsageError


class LeftRight(enum.Enum):
    """Which left–right (array axis 2) view of its input window a runner synthesizes."""

    PLAIN = "plain"
    AVERAGED = "averaged"
    MIRRORED = "mirrored"

    @classmethod
    def chosen(cls, flip_tta: bool, mirrored: bool) -> "LeftRight":
        """The view for ``synthesize_array``'s two switches (both at once has no meaning)."""
        if flip_tta and mirrored:
            raise UsageError("A synthesis is either flip-averaged or mirrored, not both.")
        return cls.AVERAGED if flip_tta else cls.MIRRORED if mirrored else cls.PLAIN

    @property
    def forwards(self) -> int:
        """Network inputs per window: two when averaged."""
        return 2 if self is LeftRight.AVERAGED else 1

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """The network input for windows ``x`` (B, C, D, H, W): as is, mirrored, or both (2B)."""
        if self is LeftRight.PLAIN:
            return x
        mirrored = torch.flip(x, dims=(-1,))
        return mirrored if self is LeftRight.MIRRORED else torch.cat([x, mirrored], 0)

    def merged(self, out: torch.Tensor) -> torch.Tensor:
        """The outputs (…, W) of :meth:`batch`'s input back in the windows' own orientation."""
        if self is LeftRight.PLAIN:
            return out
        if self is LeftRight.MIRRORED:
            return torch.flip(out, dims=(-1,))
        b = out.shape[0] // 2
        return 0.5 * (out[:b] + torch.flip(out[b:], dims=(-1,)))
