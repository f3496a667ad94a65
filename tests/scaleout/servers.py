"""Throw-away PostgreSQL, Redis and S3 (moto) servers for the scale-out tests, without Docker.

Each context manager starts one real server bound to 127.0.0.1 on a free port, with its files in a
fresh temporary folder, and stops it and deletes the folder when the block ends, also when the block
raises. A server that cannot start raises :class:`ServerStartError` naming the binary and its log:
these tests never skip.

Needs (scripts/install.sh brings them): PostgreSQL 15's ``initdb``/``pg_ctl`` on PATH or in
``/usr/lib/postgresql/15/bin``; ``redis-server`` (Debian); ``moto[server]`` and ``psycopg2``
(from dagster-postgres).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin")


class ServerStartError(RuntimeError):
    """A test server did not start (the message names the binary and the log to read)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"


def _which(name: str, extra_dirs: tuple[str, ...] = ()) -> str | None:
    return shutil.which(name, path=os.pathsep.join([*extra_dirs, os.environ.get("PATH", "")]))


# -- PostgreSQL --------------------------------------------------------------------------------


@dataclass
class PostgresServer:
    port: int
    dbname: str
    log_path: Path
    host: str = "127.0.0.1"
    user: str = "postgres"
    password: str = "trust-auth-unused"

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads (``env:`` entries)."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.dbname,
        }


def _run_as_postgres() -> tuple[list[str], int | None, int | None]:
    """A command prefix (and uid, gid) so that PostgreSQL, which refuses root, runs as ``postgres``."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerStartError("PostgreSQL refuses to run as root and there is no 'postgres' user") from None
    return [_which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"], user.pw_uid, user.pw_gid


@contextlib.contextmanager
def postgres_server(dbname: str = "dagster") -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL cluster (trust authentication, fsync off) holding database ``dbname``."""
    initdb, pg_ctl = _which("initdb", PG_BIN_DIRS), _which("pg_ctl", PG_BIN_DIRS)
    if not initdb or not pg_ctl:
        raise ServerStartError(f"PostgreSQL's initdb/pg_ctl not found on PATH or in {PG_BIN_DIRS}")
    prefix, uid, gid = _run_as_postgres()
    tmp = Path(tempfile.mkdtemp(prefix="aquamvs-pg-"))
    data, log = tmp / "data", tmp / "postgres.log"
    if uid is not None:
        os.chown(tmp, uid, gid)
    started = False
    try:
        init = subprocess.run(
            [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp,
        )
        if init.returncode != 0:
            raise ServerStartError(f"{initdb} failed ({init.returncode}):\n{init.stdout}{init.stderr}")
        for _attempt in range(3):
            port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={tmp} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            start = [
                *prefix,
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ]
            if subprocess.run(start, capture_output=True, timeout=90, cwd=tmp).returncode == 0:
                started = True
                break
        if not started:
            raise ServerStartError(f"{pg_ctl} start failed; {log}:\n{log_tail(log)}")
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{dbname}"')
        connection.close()
        yield PostgresServer(port, dbname, log)
    finally:
        if started:
            for mode in ("fast", "immediate"):
                stop = [*prefix, pg_ctl, "-D", str(data), "-m", mode, "-w", "-t", "20", "stop"]
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if subprocess.run(stop, capture_output=True, timeout=40).returncode == 0:
                        break
        shutil.rmtree(tmp, ignore_errors=True)


# -- Redis -------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A redis-server without persistence; :meth:`stop` and :meth:`start` reuse the port."""

    exe: str
    port: int
    folder: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.folder / "redis.log"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout_s: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        command = [self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder)]
        command += ["--save", "", "--appendonly", "no", "--logfile", str(self.log_path)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise ServerStartError(
            f"{self.exe} did not answer on port {self.port}; {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    exe = _which("redis-server")
    if not exe:
        raise ServerStartError(
            "redis-server is not installed (scripts/install.sh: apt-get install redis-server)"
        )
    folder = Path(tempfile.mkdtemp(prefix="aquamvs-redis-"))
    server = None
    try:
        for attempt in range(3):
            server = RedisServer(exe, free_port(), folder)
            try:
                server.start()
                break
            except ServerStartError:
                if attempt == 2:
                    raise
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


# -- S3 (moto) ---------------------------------------------------------------------------------

S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


def _moto_thread_server(port: int):
    """moto's in-process S3 server whose ``stop()`` acts like a crash: moto's own stop only ends the
    accept loop, leaving the listening socket bound and keep-alive connections served, so a client
    would not notice an outage. This one also closes the listener and resets open connections. The
    objects live in this process's moto backends, so a later ``start()`` serves them again."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    open_connections: set[socket.socket] = set()
    lock = threading.Lock()

    class TrackedHandler(MotoRequestHandler):
        def setup(self):
            super().setup()
            with lock:
                open_connections.add(self.connection)

        def finish(self):
            with lock:
                open_connections.discard(self.connection)
            super().finish()

        def log_request(self, *args, **kwargs):  # no line per request
            pass

    class CrashableServer(ThreadedMotoServer):
        start_error: BaseException | None = None

        def _server_entry(self) -> None:
            try:
                app = DomainDispatcherApplication(create_backend_app)
                self._server = make_server(
                    self._ip_address, self._port, app, True, request_handler=TrackedHandler
                )
            except BaseException as exc:  # e.g. the port is taken: report it instead of hanging
                self.start_error = exc
                self._server_ready_event.set()
                return
            self._server_ready_event.set()
            self._server.serve_forever()

        def start(self) -> None:
            self._server_ready_event.clear()
            self._thread = threading.Thread(target=self._server_entry, daemon=True)
            self._thread.start()
            if not self._server_ready_event.wait(20) or self.start_error is not None:
                raise ServerStartError(
                    f"moto S3 server could not listen on port {self._port}: {self.start_error}"
                )

        def stop(self) -> None:
            super().stop()
            if self._server is not None:
                self._server.server_close()
            with lock:
                connections = list(open_connections)
                open_connections.clear()
            for connection in connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    connection.close()

    return CrashableServer(ip_address="127.0.0.1", port=port, verbose=False)


@dataclass
class S3Server:
    port: int
    bucket: str
    key: str = "aquamvs-test-key"
    secret: str = "aquamvs-test-secret"
    _server: object = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def start(self) -> None:
        if self._server is None:
            server = _moto_thread_server(self.port)
            server.start()
            self._server = server

    def stop(self) -> None:
        """Like a crash of the server (see :func:`_moto_thread_server`); objects are kept."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )


@contextlib.contextmanager
def s3_server(bucket: str = "aquamvs") -> Iterator[S3Server]:
    """A moto S3 server in this process with one bucket; the ``AWS_*`` variables are set inside only."""
    saved = {name: os.environ.get(name) for name in S3_ENV}
    server = None
    try:
        for attempt in range(3):
            server = S3Server(free_port(), bucket)
            try:
                server.start()
                break
            except ServerStartError:
                server = None
                if attempt == 2:
                    raise
        os.environ.update(server.env())
        server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        if server is not None:
            server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
