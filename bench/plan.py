"""What the benchmark measures: issue 3's table, row by row, with its targets."""

from __future__ import annotations

from dataclasses import dataclass, field

# Peak memory of dataferry must stay under this, whatever the file size.
MEMORY_TARGET_MB = 200.0


@dataclass(frozen=True)
class Target:
    peer: str
    max_ratio: float  # dataferry time / peer time must be <= this


@dataclass(frozen=True)
class Row:
    workload: str
    far: bool  # through the delay proxy (30 ms RTT) instead of straight loopback
    peers: tuple[str, ...]  # dataferry is always added in front
    targets: tuple[Target, ...]
    # Medians measured for issue 3 on a 2-core machine (full sizes), seconds.
    issue_reference: dict[str, float] = field(default_factory=dict)
    # Through a jump host (a second sshd; the far link, if any, is in front of it).
    jump: bool = False

    @property
    def key(self) -> str:
        link = "rtt30" if self.far else "loopback"
        return f"{self.workload}@{link}{'+jump' if self.jump else ''}"

    @property
    def link(self) -> str:
        return ("30 ms RTT" if self.far else "loopback") + (" via jump" if self.jump else "")


ROWS: tuple[Row, ...] = (
    Row(
        "file-1g",
        far=False,
        peers=("scp", "sftp", "rclone", "seed"),
        targets=(Target("scp", 1.0),),
        issue_reference={"scp": 2.0, "sftp": 2.2, "rclone": 4.4, "seed": 6.0},
    ),
    Row(
        "file-200m",
        far=True,
        peers=("scp", "sftp", "rclone", "seed"),
        targets=(Target("scp", 0.4),),
        issue_reference={"scp": 4.1, "sftp": 4.2, "rclone": 4.3, "seed": 4.5},
    ),
    Row(
        "small-200",
        far=True,
        peers=("sftp", "rclone", "rclone-32", "seed"),
        targets=(Target("sftp", 0.1), Target("rclone-32", 0.5)),
        issue_reference={"sftp": 25.9, "rclone": 11.8, "rclone-32": 5.3, "seed": 40.1},
    ),
    Row(
        "small-2000",
        far=False,
        # dataferry-tty: the same run on a pseudo-terminal (issue 15: at most 10%
        # slower than off one, so dataferry's ratio to it should be >= 0.91).
        peers=("scp", "sftp", "rclone", "rclone-32", "seed", "dataferry-tty"),
        targets=(Target("sftp", 1.0),),
        issue_reference={"scp": 1.9, "sftp": 1.5, "rclone": 5.0, "seed": 24.0},
    ),
    Row(
        "zip",
        far=False,
        peers=("scp+unzip", "seed"),
        targets=(Target("scp+unzip", 0.4),),
        issue_reference={"scp+unzip": 1.9, "seed": 1.8},
    ),
    Row(
        "targz",
        far=False,
        peers=("scp+tar", "ssh-cat-tar", "seed"),
        targets=(Target("scp+tar", 0.4),),
        issue_reference={"scp+tar": 1.9, "ssh-cat-tar": 1.9, "seed": 2.0},
    ),
    # Issue 11: through a jump host, against OpenSSH's own `scp -J` (same route).
    Row(
        "file-200m",
        far=True,
        jump=True,
        peers=("scp",),
        targets=(Target("scp", 1.0),),
    ),
)
