"""A local, REST-compatible Azure Batch service: the unmodified ``azure-batch`` SDK talks to it over HTTP.

Run it from the command line (``aiobatch emulator`` or ``python -m aiobatch.emulator``) the way Azurite serves
Blob Storage, or in code::

    async with Emulator(apps_dir=Path("apps")) as emu:
        async with BatchClient(emu.endpoint, emu.credential) as batch:
            await batch.create_pool(...)

Tasks run as local processes on emulated nodes, each node a directory tree in the Batch layout with
``taskSlotsPerNode`` slots, with a node's environment rather than the emulator's own (see ``pass_env``); they are
not sandboxed: run only code you trust.  Application packages are zip files under
``apps_dir/<application id>/<version>.zip``.
Clients authenticate with the account's Shared Key, and, when the emulator serves HTTPS (``ssl_cert`` and
``ssl_key``) with ``auth`` naming ``entra``, with Entra ID bearer tokens (checked for form, Batch's audience and
lifetime; not for signature or role assignments: see `_auth`).
Only the wire is shared with the client: nothing here imports the rest of aiobatch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import aiohttp
from aiohttp import web
from azure.core.credentials import AzureNamedKeyCredential

from ._app import build_app
from ._auth import AUTH_MODES, BATCH_AUDIENCE, check_auth_modes
from ._clock import Clock, check_speed, using
from ._containers import resolve_runtime
from ._faults import FAULT_HEADER, FaultLedger, FaultPlan, Faults
from ._model import Account, Application
from ._scheduler import Quotas, Scheduler, Timings
from ._simulate import Simulation
from ._support import SupportContext

__all__ = [
    "AUTH_MODES",
    "BATCH_AUDIENCE",
    "DEFAULT_ACCOUNT_KEY",
    "DEFAULT_ACCOUNT_NAME",
    "FAULT_HEADER",
    "Clock",
    "Emulator",
    "FaultLedger",
    "FaultPlan",
    "Quotas",
    "Simulation",
    "Timings",
    "check_auth_modes",
    "check_pass_env",
    "load_applications",
    "server_ssl_context",
]

#: The emulator's well-known development account (like Azurite's devstoreaccount1): not a secret.
DEFAULT_ACCOUNT_NAME = "devbatchaccount1"
DEFAULT_ACCOUNT_KEY = "YWlvYmF0Y2ggZW11bGF0b3Igd2VsbC1rbm93biBkZXZlbG9wbWVudCBrZXksIG5vdCBhIHNlY3JldCEhISEhISE="

log = logging.getLogger("aiobatch.emulator")


def load_applications(apps_dir: Path | None) -> dict[str, Application]:
    """Read application packages from ``apps_dir/<application id>/<version>.zip``.

    An application's default version is the one named in ``apps_dir/<id>/default`` (a text file), or its only
    version when it has one.

    Args:
        apps_dir: The folder, or None for no applications.

    Returns:
        Applications keyed by lower-cased id.

    Raises:
        ValueError: the folder does not exist.
    """
    if apps_dir is None:
        return {}
    if not apps_dir.is_dir():
        raise ValueError(f"--apps {apps_dir}: no such folder; create it with <application id>/<version>.zip inside")
    apps: dict[str, Application] = {}
    for app_dir in sorted(p for p in apps_dir.iterdir() if p.is_dir()):
        versions = {z.stem: z for z in sorted(app_dir.glob("*.zip"))}
        if not versions:
            continue
        default_file = app_dir / "default"
        default = default_file.read_text().strip() if default_file.is_file() else None
        if default is None and len(versions) == 1:
            default = next(iter(versions))
        apps[app_dir.name.lower()] = Application(app_dir.name, versions, default)
    return apps


def check_pass_env(names: Iterable[str]) -> tuple[str, ...]:
    """Check the names of variables to pass through to tasks; return them as a tuple, in order, without repeats.

    Raises:
        ValueError: a name is not a string, is empty, holds ``=`` or a NUL, or starts with ``AZ_BATCH_`` (those are
            the node's own).
    """
    if isinstance(names, str):
        names = (names,)  # one name, not its characters
    checked: dict[str, None] = {}
    for name in names:
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise ValueError(f"pass_env: {name!r} is not an environment variable name (give names, not NAME=VALUE)")
        if name.upper().startswith("AZ_BATCH_"):
            raise ValueError(f"pass_env: {name} is a variable the node sets for tasks; it cannot be passed through")
        checked[name] = None
    return tuple(checked)


def server_ssl_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate (chain) and its private key, checked before anything binds.

    Args:
        cert: The certificate file, PEM; its names must cover the host clients connect to.
        key: Its private key, PEM, unencrypted.

    Returns:
        The context, TLS 1.2 or later.

    Raises:
        ValueError: a file is missing or unreadable, or the two are not a PEM certificate and its key.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ValueError(f"TLS: {exc.filename}: no such file (give --cert and --key as PEM files)") from None
    except ssl.SSLError as exc:
        # The message names the files, never their contents (a private key).
        raise ValueError(
            f"TLS: {cert} and {key} are not a PEM certificate and its unencrypted private key ({exc.reason})"
        ) from None
    except OSError as exc:
        raise ValueError(f"TLS: cannot read {exc.filename or cert}: {exc.strerror or exc}") from None
    return context


class Emulator:
    """An Azure Batch account on loopback, as an async context manager.

    Args:
        host: Interface to bind; loopback unless you mean to expose it.
        port: Port to bind; 0 picks a free one (see `endpoint` once entered).
        account_name: The Batch account name clients sign requests with.
        account_key: Its base64 key (the well-known development key by default).
        apps_dir: Application packages, ``<id>/<version>.zip``.
        workdir: Where nodes keep their directories; a temporary folder (removed on exit) by default.
        timings: How long allocation, node start and deletion take (copied: changing ``emulator.timings`` later
            changes this emulator only).
        quotas: Core quotas; a pool beyond them gets the service's resize error instead of nodes.
        faults: Faults to inject (seeded); none by default. A single request can also ask for one with the
            ``x-aiobatch-fault`` header.
        pass_env: Names of variables of this process's environment that every task (and start task) also gets,
            read when the emulator starts. None by default: a task gets a node's environment (the ``AZ_BATCH_*``
            variables, its job's and its own environment settings, a node's ``PATH``), never the caller's
            credentials or tokens. ``AZ_BATCH_*`` names are the node's and cannot be passed through.
        strict_catalogue: Whether a pool's VM size and image must be ones Azure Batch offers (the emulator's
            catalogue, also served by ``GET /supportedimages``); a size or image it does not hold gets the service's
            400. False accepts any size and image (a custom image, a size the catalogue does not list).
        ssl_cert: A PEM certificate to serve HTTPS with (``endpoint`` then starts with ``https://``); clients must
            trust it (``connection_verify=`` its path). Give ``ssl_key`` with it.
        ssl_key: The certificate's PEM private key.
        node_ca_file: PEM certificates that nodes trust, besides the system's, when they fetch resource files
            and upload output files over HTTPS: the stand-in for an image with a private CA installed, for an
            Azurite served with a self-signed certificate.
        auth: How clients may authenticate, from `AUTH_MODES`: ``sharedkey`` (the account key, the default) and
            ``entra`` (Entra ID bearer tokens for audience `BATCH_AUDIENCE`, over HTTPS only). A request by a mode
            that is off gets the service's refusal, as from an account whose allowed authentication modes leave
            it out.
        container_runtime: A container runtime (``"docker"``, ``"podman"`` or the path of one) that tasks with
            ``containerSettings`` run through (``<runtime> run``) and that pulls a pool's ``containerImageNames``.
            None (the default) refuses container tasks and pools with the service's 400 naming the property:
            a task never runs on the host as if its image were there.
        clock_speed: How much faster than real time the emulated service's clock runs (more than 0; 1 by default).
            Every timestamp the emulator answers comes from that clock, which starts at the real "now" when the
            emulator starts; every duration (``retentionTime``, ``maxWallClockTime``, autoscale intervals, the
            ``timings``) becomes a real wait ``clock_speed`` times shorter: at 60, an hour passes in a minute.
        simulate_tasks: Run tasks as models instead of processes (`Simulation`, or its text form such as
            ``"duration=lognormal:1,0.5;fail=0.01;seed=7"``): each task takes a modelled duration and exit code,
            drawn seeded or given per task by its ``AZ_SIM_DURATION`` and ``AZ_SIM_EXIT`` environment settings;
            no process starts and no task directory is made (a task's files answer ``TaskFilesUnavailable``).

    Raises:
        ValueError: a ``pass_env`` name is empty, holds ``=`` or a NUL, or starts with ``AZ_BATCH_``; an unknown
            ``auth`` mode; ``ssl_cert`` without ``ssl_key`` or the reverse; ``entra`` without a certificate;
            a ``container_runtime`` that is not found; a ``clock_speed`` that is not a number more than 0; a
            ``simulate_tasks`` text that does not parse.

    Example:
        >>> async with Emulator() as emu:  # doctest: +SKIP
        ...     client = BatchClient(emu.endpoint, emu.credential)
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        account_name: str = DEFAULT_ACCOUNT_NAME,
        account_key: str = DEFAULT_ACCOUNT_KEY,
        apps_dir: Path | str | None = None,
        workdir: Path | str | None = None,
        timings: Timings | None = None,
        quotas: Quotas | None = None,
        faults: FaultPlan | None = None,
        pass_env: Iterable[str] = (),
        strict_catalogue: bool = True,
        ssl_cert: Path | str | None = None,
        ssl_key: Path | str | None = None,
        node_ca_file: Path | str | None = None,
        auth: Iterable[str] = ("sharedkey",),
        container_runtime: str | Path | None = None,
        clock_speed: float = 1.0,
        simulate_tasks: Simulation | str | None = None,
    ) -> None:
        self.pass_env = check_pass_env(pass_env)
        self.clock_speed = check_speed(clock_speed)
        self.simulation = Simulation.parse(simulate_tasks) if isinstance(simulate_tasks, str) else simulate_tasks
        #: The emulated service's clock (made when the emulator starts).
        self.clock: Clock | None = None
        self.strict_catalogue = strict_catalogue
        self.auth = check_auth_modes(auth)
        self.container_runtime = resolve_runtime(container_runtime)
        if (ssl_cert is None) != (ssl_key is None):
            raise ValueError("ssl_cert and ssl_key go together: give both to serve HTTPS, or neither")
        self.ssl_cert = Path(ssl_cert) if ssl_cert is not None else None
        self.ssl_key = Path(ssl_key) if ssl_key is not None else None
        self.node_ca_file = Path(node_ca_file) if node_ca_file is not None else None
        if "entra" in self.auth and self.ssl_cert is None:
            # azure-core sends tokens over HTTPS only, and a token is a live credential for the real service.
            raise ValueError("auth 'entra' needs HTTPS: give ssl_cert and ssl_key (--cert and --key)")
        self.host = host
        self.port = port
        self.account_name = account_name
        self._account_key = account_key
        self.apps_dir = Path(apps_dir) if apps_dir is not None else None
        self._workdir = Path(workdir) if workdir is not None else None
        # A copy: one emulator's timings changed at run time never reach another emulator given the same object.
        self.timings = dataclasses.replace(timings) if timings is not None else Timings()
        self.quotas = quotas or Quotas()
        self.faults = Faults(faults)
        self._runner: web.AppRunner | None = None
        self._scheduler: Scheduler | None = None
        self._tmp: str | None = None
        self.account: Account | None = None

    def __repr__(self) -> str:
        return (
            f"Emulator(endpoint={self.endpoint if self._runner else None!r}, account_name={self.account_name!r}, "
            f"auth={','.join(self.auth)!r})"
        )

    @property
    def endpoint(self) -> str:
        """The account URL clients use, e.g. ``http://127.0.0.1:41234`` (``https://`` when serving a certificate)."""
        if self._runner is None:
            raise RuntimeError("the emulator is not running; use `async with Emulator() as emu:`")
        scheme = "https" if self.ssl_cert is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def credential(self) -> AzureNamedKeyCredential:
        """A Shared Key credential for this account, for ``BatchClient(emu.endpoint, emu.credential)``.

        Refused by the emulator when ``auth`` leaves out ``sharedkey``: use a token credential then.
        """
        return AzureNamedKeyCredential(self.account_name, self._account_key)

    @property
    def workdir(self) -> Path:
        """The folder that holds node directories and extracted application packages."""
        if self._workdir is not None:
            return self._workdir
        if self._tmp is None:
            raise RuntimeError("the emulator is not running")
        return Path(self._tmp)

    async def start(self) -> Emulator:
        """Bind, start the scheduler and return self (prefer ``async with``)."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        tls = server_ssl_context(self.ssl_cert, self.ssl_key) if self.ssl_cert and self.ssl_key else None
        node_tls = self._node_ssl_context()
        if self._workdir is None:
            self._tmp = tempfile.mkdtemp(prefix="aiobatch-emulator-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        account = Account(
            name=self.account_name,
            url="",
            applications=load_applications(self.apps_dir),
            strict_catalogue=self.strict_catalogue,
        )
        clock = Clock(self.clock_speed)
        scheduler = Scheduler(
            account,
            workdir=self.workdir,
            timings=self.timings,
            quotas=self.quotas,
            faults=self.faults,
            passed_environment=self._passed_environment(),
            container_runtime=self.container_runtime,
            clock=clock,
            simulation=self.simulation,
        )
        # The server and the scheduler's tasks are made while the clock is current: every handler and background
        # step they run inherits it (the caller's own context gets its previous clock back below).
        with using(clock):
            runner = web.AppRunner(
                build_app(
                    account,
                    scheduler,
                    self._account_key,
                    self.faults,
                    self.auth,
                    SupportContext.of_this_process(self.container_runtime),
                ),
                access_log=None,
            )
            await runner.setup()
            try:
                site = web.TCPSite(runner, self.host, self.port, ssl_context=tls)
                await site.start()
                self.port = runner.addresses[0][1]
            except BaseException:
                await runner.cleanup()
                raise
            self._runner, self._scheduler, self.account, self.clock = runner, scheduler, account, clock
            account.url = self.endpoint
            await scheduler.start(connector=aiohttp.TCPConnector(ssl=node_tls) if node_tls is not None else None)
        log.info("Batch emulator for account %s listening on %s", self.account_name, self.endpoint)
        return self

    def _node_ssl_context(self) -> ssl.SSLContext | None:
        if self.node_ca_file is None:
            return None
        context = ssl.create_default_context()  # the system's authorities, as a node has
        try:
            context.load_verify_locations(cafile=self.node_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"node_ca_file {self.node_ca_file}: not readable PEM certificates ({exc})") from None
        return context

    def _passed_environment(self) -> dict[str, str]:
        passed = {name: os.environ[name] for name in self.pass_env if name in os.environ}
        missing = [name for name in self.pass_env if name not in passed]
        if missing:
            log.warning("pass_env: %s not set in the emulator's environment; tasks will not have it", missing)
        return passed

    @property
    def ledger(self) -> FaultLedger:
        """What the emulator injected so far, by kind."""
        return self.faults.ledger

    async def lose_node(self, pool_id: str, node_id: str | None = None, *, state: str = "preempted") -> str:
        """Preempt a node (``state="preempted"``) or make it ``unusable`` mid-work; its tasks are requeued.

        Args:
            pool_id: The pool.
            node_id: The node; by default a node running tasks (or the first one).
            state: ``preempted`` or ``unusable``.

        Returns:
            The id of the node that was lost.
        """
        if self._scheduler is None or self.account is None:
            raise RuntimeError("the emulator is not running")
        if state not in ("preempted", "unusable"):
            raise ValueError("state must be 'preempted' or 'unusable'")
        pool = self.account.get_pool(pool_id)
        nodes = sorted(pool.nodes.values(), key=lambda n: not n.running)
        node = pool.nodes[node_id] if node_id else nodes[0]
        with using(self._scheduler.clock):
            await self._scheduler.lose_node(pool, node, state)
        return node.id

    async def stop(self) -> None:
        """Kill running tasks, stop serving and remove the temporary work folder; safe to call twice."""
        scheduler, runner = self._scheduler, self._runner
        self._scheduler = self._runner = None
        if scheduler is not None:
            await scheduler.stop()
        if runner is not None:
            await runner.cleanup()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
