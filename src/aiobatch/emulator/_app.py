"""The aiohttp application: the one route table, the middlewares, and the answer to operations not emulated.

Handlers (`_handlers`, one module per resource) read the request, change the model (through the scheduler where
things must happen over time) and answer through `_wire`.  Errors are `ServiceError`s, rendered by one middleware
as the service's OData body.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import _taskfiles as taskfiles
from . import _wire as wire
from ._auth import auth_middleware
from ._faults import Faults, fault_middleware
from ._handlers import account as account_api
from ._handlers import files, jobs, nodes, pools, schedules, tasks
from ._handlers._common import ACCOUNT_KEY, FAULTS_KEY, FILE_WORKERS_KEY, SCHEDULER_KEY, Handler
from ._model import Account, ServiceError, check_id
from ._scheduler import Scheduler
from ._support import SUPPORT_KEY, SupportContext
from ._validate import validation_middleware

log = logging.getLogger("aiobatch.emulator")

# -- operations the emulator does not perform ---------------------------------------------------------------

#: Every operation of the 2025-06-01 API that the emulator does not perform: (method, route, the SDK's method).
#: Each answers `_not_emulated`'s error, never a 404 (which the SDK raises as ``ResourceNotFoundError``, telling
#: a caller of ``begin_reboot_node`` that the *node* does not exist). tests/emulator/test_operations.py parses the
#: installed SDK's request builders, so an operation a new SDK adds fails a test until it is listed here or served.
NOT_EMULATED: tuple[tuple[str, str, str], ...] = ()

#: The not-emulated answer's status and code. 501 Not Implemented, because that is what it is: the request may be
#: perfectly valid (a 4xx would blame the caller), and it is final for every client in the chain -- azure-core's
#: RetryPolicy retries only 408, 429, 500, 502, 503 and 504 (and no answer here carries Retry-After, which it
#: would honour), and aiobatch's `_retry` treats 501 as final. The SDK has no exception mapped to 501, so it
#: raises a plain ``HttpResponseError`` whose ``error.code`` is this code, not a ``ResourceNotFoundError``.
NOT_EMULATED_STATUS = 501
NOT_EMULATED_CODE = "OperationNotEmulated"


def _not_emulated(method: str, path: str, operation: str) -> Handler:
    """A handler answering that the emulator does not perform ``operation`` (the SDK method's name) at ``path``.

    It looks nothing up: whatever the ids in the route, the caller learns first that the operation is not
    emulated. A body has already been checked by the validation layer (a malformed one is the 400 Azure would
    give), so only a well-formed request gets this answer.
    """
    shown = path.replace(":.+", "")

    async def handler(request: web.Request) -> web.Response:
        raise ServiceError(
            NOT_EMULATED_STATUS,
            NOT_EMULATED_CODE,
            f"The aiobatch emulator does not emulate the operation {operation} ({method} {shown})."
            " Test code that uses it against an Azure Batch account; docs/emulator.md, 'Operations and what the"
            " emulator refuses', lists what is emulated.",
            [("OperationName", operation)],
        )

    return handler


# -- the application --------------------------------------------------------------------------------


def _error_middleware(account: Account) -> Middleware:
    # The account's URL is read per request: it is known only once the server is bound, after the app is built.
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            wire.api_version_of(request)
            response = await handler(request)
        except ServiceError as error:
            response = wire.error_response(account.url, error)
        except web.HTTPNotFound:
            response = wire.error_response(
                account.url, ServiceError(404, "ResourceNotFound", "The specified resource does not exist.")
            )
        except web.HTTPMethodNotAllowed:
            response = wire.error_response(
                account.url,
                ServiceError(405, "UnsupportedHttpVerb", "The resource doesn't support the specified HTTP verb."),
            )
        except web.HTTPException as http_error:  # aiohttp's own refusals (a body over the size limit, ...)
            response = wire.error_response(
                account.url, ServiceError(http_error.status, http_error.reason.replace(" ", ""), http_error.reason)
            )
        except Exception:
            # A bug, not a refusal: logged with its traceback, answered as the service answers its own failures,
            # so that the client sees a Batch error (and may retry) instead of a dropped connection.
            log.exception("unexpected error in %s %s", request.method, request.path)
            response = wire.error_response(
                account.url,
                ServiceError(500, "InternalServerError", "The server encountered an internal error. Please retry."),
            )
        if not response.prepared:  # a streamed file answer set its headers itself
            response.headers.update(wire.echoed_headers(request))
        return response

    return middleware


async def _close_file_workers(app: web.Application) -> None:
    app[FILE_WORKERS_KEY].close()


def build_app(
    account: Account,
    scheduler: Scheduler,
    account_key: str,
    faults: Faults,
    auth_modes: Iterable[str] = ("sharedkey",),
    support: SupportContext | None = None,
) -> web.Application:
    """The emulator's aiohttp application for one account.

    Middlewares, outermost first: errors rendered as OData bodies, authentication by ``auth_modes`` (Shared Key,
    Entra ID bearer tokens; so a request that does not authenticate changes nothing), injected faults (only
    authenticated requests are eligible), then the validation layer (a body of the wrong types is refused before
    any handler sees it; so is a property the support matrix refuses, `_support`, with ``support`` saying what
    this emulator can do beyond its defaults: a container runtime, admin rights).
    """
    app = web.Application(
        middlewares=[
            _error_middleware(account),
            auth_middleware(
                account.name, account_key, lambda request, error: wire.error_response(account.url, error), auth_modes
            ),
            fault_middleware(faults),
            validation_middleware(),
        ],
        client_max_size=4 * 1024 * 1024,
    )
    app[ACCOUNT_KEY] = account
    app[SCHEDULER_KEY] = scheduler
    app[FAULTS_KEY] = faults
    app[SUPPORT_KEY] = support or SupportContext.of_this_process()
    app[FILE_WORKERS_KEY] = taskfiles.FileWorkers()
    app.on_cleanup.append(_close_file_workers)
    r = _Routes(app.router, NOT_EMULATED)
    r.add_get("/applications", account_api.list_applications)
    r.add_get("/applications/{app}", account_api.get_application)
    r.add_get("/nodecounts", account_api.node_counts)
    r.add_post("/pools", pools.create_pool)
    r.add_get("/pools", pools.list_pools)
    r.add_route("HEAD", "/pools/{pool}", pools.get_pool)
    r.add_get("/pools/{pool}", pools.get_pool, allow_head=False)
    r.add_delete("/pools/{pool}", pools.delete_pool)
    r.add_patch("/pools/{pool}", pools.patch_pool)
    r.add_post("/pools/{pool}/resize", pools.resize_pool)
    r.add_post("/pools/{pool}/stopresize", pools.stop_resize_pool)
    r.add_post("/pools/{pool}/updateproperties", pools.replace_pool_properties)
    r.add_post("/pools/{pool}/enableautoscale", pools.enable_pool_autoscale)
    r.add_post("/pools/{pool}/disableautoscale", pools.disable_pool_autoscale)
    r.add_post("/pools/{pool}/evaluateautoscale", pools.evaluate_pool_autoscale)
    r.add_post("/pools/{pool}/removenodes", pools.remove_nodes)
    r.add_get("/poolusagemetrics", pools.list_pool_usage_metrics)
    r.add_get("/pools/{pool}/nodes", nodes.list_nodes)
    r.add_get("/pools/{pool}/nodes/{node}", nodes.get_node)
    r.add_post("/pools/{pool}/nodes/{node}/reboot", nodes.reboot_node)
    r.add_post("/pools/{pool}/nodes/{node}/reimage", nodes.reimage_node)
    r.add_post("/pools/{pool}/nodes/{node}/start", nodes.start_node)
    r.add_post("/pools/{pool}/nodes/{node}/deallocate", nodes.deallocate_node)
    r.add_post("/pools/{pool}/nodes/{node}/disablescheduling", nodes.disable_node_scheduling)
    r.add_post("/pools/{pool}/nodes/{node}/enablescheduling", nodes.enable_node_scheduling)
    r.add_post("/pools/{pool}/nodes/{node}/users", nodes.create_node_user)
    r.add_put("/pools/{pool}/nodes/{node}/users/{user}", nodes.replace_node_user)
    r.add_delete("/pools/{pool}/nodes/{node}/users/{user}", nodes.delete_node_user)
    r.add_get("/pools/{pool}/nodes/{node}/remoteloginsettings", nodes.get_remote_login_settings)
    r.add_post("/pools/{pool}/nodes/{node}/uploadbatchservicelogs", nodes.upload_service_logs)
    r.add_get("/pools/{pool}/nodes/{node}/extensions", nodes.list_node_extensions)
    r.add_get("/pools/{pool}/nodes/{node}/extensions/{extension}", nodes.get_node_extension)
    r.add_get("/pools/{pool}/nodes/{node}/files", nodes.list_node_files)
    r.add_get("/pools/{pool}/nodes/{node}/files/{path:.+}", nodes.get_node_file)
    r.add_delete("/pools/{pool}/nodes/{node}/files/{path:.+}", nodes.delete_node_file)
    r.add_post("/jobs", jobs.create_job)
    r.add_get("/jobs", jobs.list_jobs)
    r.add_get("/jobs/{job}", jobs.get_job)
    r.add_patch("/jobs/{job}", jobs.update_job)
    r.add_put("/jobs/{job}", jobs.update_job)
    r.add_delete("/jobs/{job}", jobs.delete_job)
    r.add_post("/jobs/{job}/terminate", jobs.terminate_job)
    r.add_post("/jobs/{job}/disable", jobs.disable_job)
    r.add_post("/jobs/{job}/enable", jobs.enable_job)
    r.add_get("/jobs/{job}/taskcounts", jobs.task_counts)
    r.add_get("/jobs/{job}/jobpreparationandreleasetaskstatus", jobs.list_preparation_and_release_status)
    r.add_post("/jobs/{job}/tasks", tasks.create_task)
    r.add_get("/jobs/{job}/tasks", tasks.list_tasks)
    r.add_post("/jobs/{job}/addtaskcollection", tasks.add_task_collection)
    r.add_get("/jobs/{job}/tasks/{task}", tasks.get_task)
    r.add_put("/jobs/{job}/tasks/{task}", tasks.replace_task)
    r.add_delete("/jobs/{job}/tasks/{task}", tasks.delete_task)
    r.add_post("/jobs/{job}/tasks/{task}/terminate", tasks.terminate_task)
    r.add_post("/jobs/{job}/tasks/{task}/reactivate", tasks.reactivate_task)
    r.add_get("/jobs/{job}/tasks/{task}/subtasksinfo", tasks.list_subtasks)
    r.add_get("/jobs/{job}/tasks/{task}/files", files.list_task_files)
    r.add_get("/jobs/{job}/tasks/{task}/files/{path:.+}", files.get_task_file)
    r.add_delete("/jobs/{job}/tasks/{task}/files/{path:.+}", files.delete_task_file)
    r.add_get("/supportedimages", account_api.list_supported_images)
    schedules.install(app)
    r.add_post("/jobschedules", schedules.create_job_schedule)
    r.add_get("/jobschedules", schedules.list_job_schedules)
    r.add_route("HEAD", "/jobschedules/{schedule}", schedules.get_job_schedule)
    r.add_get("/jobschedules/{schedule}", schedules.get_job_schedule, allow_head=False)
    r.add_patch("/jobschedules/{schedule}", schedules.update_job_schedule)
    r.add_put("/jobschedules/{schedule}", schedules.update_job_schedule)
    r.add_delete("/jobschedules/{schedule}", schedules.delete_job_schedule)
    r.add_post("/jobschedules/{schedule}/disable", schedules.disable_job_schedule)
    r.add_post("/jobschedules/{schedule}/enable", schedules.enable_job_schedule)
    r.add_post("/jobschedules/{schedule}/terminate", schedules.terminate_job_schedule)
    r.add_get("/jobschedules/{schedule}/jobs", schedules.list_jobs_from_schedule)
    # Every operation in the table answers the not-emulated error, whether or not it has a handler above.
    r.add_withdrawn()
    return app


class _Routes:
    """The route table's builder: every ``add_*`` of an operation listed in ``withdrawn`` is left out.

    `NOT_EMULATED` is then the one place that says an operation is not performed: listing a served operation
    there withdraws it (its 501 replaces the handler) rather than routing it twice. A new SDK's operation with
    no handler yet is listed there too, so it answers the 501 until it is emulated.
    """

    def __init__(self, router: web.UrlDispatcher, withdrawn: Iterable[tuple[str, str, str]]) -> None:
        self._router = router
        self._withdrawn = {(method, path): operation for method, path, operation in withdrawn}

    def _add(self, method: str, path: str, handler: Handler) -> None:
        if (method, path) not in self._withdrawn:
            self._router.add_route(method, path, handler)

    def add_get(self, path: str, handler: Handler, *, allow_head: bool = True) -> None:
        self._add("GET", path, handler)
        if allow_head:  # as aiohttp's add_get: HEAD is served by the GET handler
            self._add("HEAD", path, handler)

    def add_post(self, path: str, handler: Handler) -> None:
        self._add("POST", path, handler)

    def add_put(self, path: str, handler: Handler) -> None:
        self._add("PUT", path, handler)

    def add_patch(self, path: str, handler: Handler) -> None:
        self._add("PATCH", path, handler)

    def add_delete(self, path: str, handler: Handler) -> None:
        self._add("DELETE", path, handler)

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        self._add(method, path, handler)

    def add_withdrawn(self) -> None:
        """Route every withdrawn operation to its not-emulated answer."""
        for (method, path), operation in self._withdrawn.items():
            self._router.add_route(method, path, _not_emulated(method, path, operation))


__all__ = ["build_app", "check_id"]
