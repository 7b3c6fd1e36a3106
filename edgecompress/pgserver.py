"""A throw-away PostgreSQL server for a study shared by several workers (tests, one-box users).

`python -m edgecompress.pgserver start [--dir runs/postgres] [--port 5433]` initialises a data folder (once),
starts `postgres` on the loopback port and prints the storage URL (`postgresql://edgecompress@127.0.0.1:PORT/
edgecompress`) to pass as `--storage`; `stop` stops it. Debian's `postgresql` package provides the binaries
(`make services` installs it). `initdb` and `postgres` refuse to run as root: as root they run as the
`postgres` user (`runuser`), in a data folder handed to that user.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgecompress.errors import EdgeCompressError

__all__ = ["PgServer", "find_pg_bin", "free_port", "main"]

USER = "edgecompress"
DATABASE = "edgecompress"


def find_pg_bin() -> Path | None:
    """The folder holding initdb/pg_ctl/postgres (PATH, else Debian's $PG_LIB/<ver>/bin, PG_LIB defaulting to
    /usr/lib/postgresql as in the Makefile)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    lib = os.environ.get("PG_LIB") or "/usr/lib/postgresql"
    for d in sorted(glob.glob(f"{lib}/*/bin"), key=lambda p: int(p.split("/")[-2].split(".")[0]),
                    reverse=True):
        if (Path(d) / "pg_ctl").is_file() and (Path(d) / "initdb").is_file():
            return Path(d)
    return None


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """One PostgreSQL server: `data` folder, loopback `port`; `url` is what `--storage` takes."""

    data: Path
    port: int
    bin_dir: Path | None = None

    def __post_init__(self) -> None:
        self.data = Path(self.data).absolute()
        self.bin_dir = self.bin_dir or find_pg_bin()
        if self.bin_dir is None:
            raise EdgeCompressError("PostgreSQL not found (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
                                    "run `make services` or apt-get install postgresql")

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def _run(self, *args: str, timeout: float = 120) -> None:
        r = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout, cwd="/")
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()
            raise EdgeCompressError(f"{args[0]} failed ({r.returncode}): {tail[-1] if tail else 'no output'}")

    def init(self) -> None:
        """initdb (trust auth on loopback, a superuser named `edgecompress`) unless the folder has a cluster."""
        if (self.data / "PG_VERSION").is_file():
            return
        self.data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
            for parent in self.data.parents:  # postgres must reach its folder (tmp folders are 0700)
                if parent == Path("/"):
                    break
                parent.chmod(parent.stat().st_mode | 0o111)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self, timeout: float = 60) -> str:
        """Start the server (init first when needed), create the database, return the URL."""
        self.init()
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.data / "server.log"), "-w",
                  "-t", str(int(timeout)), "start", timeout=timeout + 10)
        self._create_db()
        return self.url

    def _create_db(self) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres",
                             autocommit=True) as con:
            if con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                con.execute(f"CREATE DATABASE {DATABASE}")

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop (`fast`: disconnect clients, `immediate`: like a crash)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down `down_s` seconds, start again (the fault tests' database outage)."""
        self.stop()
        time.sleep(down_s)
        self.start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgecompress.pgserver", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("start", "stop"))
    p.add_argument("--dir", default="runs/postgres", help="data folder (created by initdb on first start)")
    p.add_argument("--port", type=int, default=5433, help="loopback port")
    args = p.parse_args(argv)
    try:
        server = PgServer(Path(args.dir), args.port)
        if args.action == "start":
            print(server.start())
        else:
            server.stop()
    except (EdgeCompressError, OSError, subprocess.SubprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
