"""Load function modules and invoke them as the Azure Functions Python worker does.

The worker (v1 programming model) puts the app root on `sys.path` and imports each function
folder as a package. It binds parameters by binding name, plus `context` when the function
declares it. It runs `async def` functions on its event loop and other functions in a
thread pool of `PYTHON_THREADPOOL_THREAD_COUNT` threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

import azure.functions as func
from azure.functions import _abc as functions_abc

from devhost.config import HTTP_OUTPUT, ConfigurationError, FunctionConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")
CONTEXT_PARAMETER = "context"


class FunctionLoadError(ConfigurationError):
    """Importing a function's module raised; the exception is the `__cause__`."""


class FunctionTimeoutError(TimeoutError):
    """An invocation ran past host.json's functionTimeout."""


class InvalidReturnValueError(TypeError):
    """A function returned a value that its bindings cannot carry."""


class Out(func.Out[T], Generic[T]):
    """The value holder the worker passes for an output binding declared as a parameter."""

    def __init__(self) -> None:
        self._value: T | None = None

    def set(self, val: T) -> None:
        self._value = val

    def get(self) -> T:
        # An output that was never set reads as None, as in the worker.
        return self._value  # type: ignore[return-value]


class _TraceContext(functions_abc.TraceContext):
    def __init__(self, trace_parent: str) -> None:
        self._trace_parent = trace_parent

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._trace_parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(functions_abc.RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> functions_abc.RpcException:
        return _NoRpcException()


class _NoRpcException(functions_abc.RpcException):
    """The retry context's exception on a first attempt, which has no previous error."""

    @property
    def source(self) -> str:
        return ""

    @property
    def stack_trace(self) -> str:
        return ""

    @property
    def message(self) -> str:
        return ""


class Context(func.Context):
    """The `context` argument: invocation id, function name and folder."""

    def __init__(self, invocation_id: str, function: FunctionConfig) -> None:
        self._invocation_id = invocation_id
        self._function = function
        self._thread_local = threading.local()
        trace_id = uuid.uuid4().hex
        self._trace_context = _TraceContext(f"00-{trace_id}-{uuid.uuid4().hex[:16]}-00")

    def bind_thread(self) -> None:
        """Record the invocation id in `thread_local_storage` for the calling thread."""
        self._thread_local.invocation_id = self._invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._thread_local

    @property
    def function_name(self) -> str:
        return self._function.name

    @property
    def function_directory(self) -> str:
        return str(self._function.directory)

    @property
    def trace_context(self) -> functions_abc.TraceContext:
        return self._trace_context

    @property
    def retry_context(self) -> functions_abc.RetryContext:
        return _RetryContext()


@dataclass(frozen=True)
class LoadedFunction:
    """A function's configuration with its imported entry point."""

    config: FunctionConfig
    callable: Callable[..., Any]
    is_async: bool
    wants_context: bool
    output_names: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class InvocationResult:
    """The outcome of one invocation: its return value and output bindings, or its error."""

    invocation_id: str
    return_value: Any = None
    outputs: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None


def prepare_import_path(app_root: Path) -> None:
    """Put the app root first on `sys.path`, where the worker puts it."""
    root = str(app_root)
    if root not in sys.path:
        sys.path.insert(0, root)


def load_function(config: FunctionConfig, app_root: Path) -> LoadedFunction:
    """Import a function's script and check its parameters against its bindings."""
    module_name = _module_name(config, app_root)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise FunctionLoadError(
            f"Function {config.name}: importing module {module_name!r} failed: "
            f"{type(error).__name__}: {error}"
        ) from error

    module_file = getattr(module, "__file__", None)
    if module_file is None or Path(module_file).resolve() != config.script_file:
        raise ConfigurationError(
            f"Function {config.name}: module name {module_name!r} refers to "
            f"{module_file or 'a built-in module'}, not {config.script_file}; rename the "
            "function folder so it does not shadow another module."
        )

    entry = getattr(module, config.entry_point, None)
    if entry is None or not callable(entry):
        raise ConfigurationError(
            f"Function {config.name}: module {module_name!r} has no function "
            f"{config.entry_point!r} (the entryPoint in function.json, default 'main')."
        )

    parameters = inspect.signature(entry).parameters
    bound = {binding.name for binding in config.bindings if binding.name != "$return"}
    wants_context = CONTEXT_PARAMETER in parameters and CONTEXT_PARAMETER not in bound
    declared = set(parameters) - ({CONTEXT_PARAMETER} if wants_context else set())
    if declared - bound:
        raise ConfigurationError(
            f"Function {config.name}: parameters {sorted(declared - bound)} of "
            f"{config.entry_point}() have no binding in function.json."
        )
    if bound - declared:
        raise ConfigurationError(
            f"Function {config.name}: bindings {sorted(bound - declared)} in function.json "
            f"have no parameter in {config.entry_point}()."
        )

    outputs = tuple(
        binding.name
        for binding in config.bindings
        if binding.direction == "out" and binding.name != "$return"
    )
    return LoadedFunction(
        config=config,
        callable=entry,
        is_async=inspect.iscoroutinefunction(entry),
        wants_context=wants_context,
        output_names=outputs,
    )


def _module_name(config: FunctionConfig, app_root: Path) -> str:
    # The worker names the module after the script's path relative to the app root, so the
    # default `__init__.py` imports the function folder as a package.
    try:
        relative = config.script_file.relative_to(app_root.resolve())
    except ValueError:
        raise ConfigurationError(
            f"Function {config.name}: scriptFile {config.script_file} is outside the app root "
            f"{app_root}."
        ) from None
    if relative.suffix != ".py":
        raise ConfigurationError(
            f"Function {config.name}: scriptFile {relative} is not a Python file."
        )
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def thread_pool_size(environ: Mapping[str, str]) -> int | None:
    """Read PYTHON_THREADPOOL_THREAD_COUNT, or None to let Python pick its default pool size."""
    text = environ.get("PYTHON_THREADPOOL_THREAD_COUNT", "").strip()
    if not text:
        return None
    try:
        count = int(text)
    except ValueError:
        raise ConfigurationError(
            f"PYTHON_THREADPOOL_THREAD_COUNT must be a whole number, not {text!r}."
        ) from None
    if count < 1:
        raise ConfigurationError(f"PYTHON_THREADPOOL_THREAD_COUNT must be at least 1, not {count}.")
    return count


class Invoker:
    """Run functions with the host's timeout and log one line per invocation."""

    def __init__(
        self,
        *,
        function_timeout_seconds: float | None,
        thread_count: int | None = None,
    ) -> None:
        self.function_timeout_seconds = function_timeout_seconds
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=thread_count, thread_name_prefix="devhost-function"
        )
        self._thread_calls: set[concurrent.futures.Future[Any]] = set()
        self._thread_calls_lock = threading.Lock()

    @property
    def threads_running(self) -> int:
        """Synchronous invocations submitted to the thread pool and not finished yet."""
        with self._thread_calls_lock:
            return len(self._thread_calls)

    async def invoke(self, function: LoadedFunction, trigger_value: Any) -> InvocationResult:
        """Invoke a function with its trigger value and return the result.

        An exception of the function is stored in the result. Only cancellation propagates.
        """
        invocation_id = str(uuid.uuid4())
        result = InvocationResult(invocation_id)
        arguments: dict[str, Any] = {function.config.trigger.name: trigger_value}
        for name in function.output_names:
            arguments[name] = Out[Any]()
        context = Context(invocation_id, function.config)
        if function.wants_context:
            arguments[CONTEXT_PARAMETER] = context

        started = time.monotonic()
        try:
            result.return_value = await self._run(function, arguments, context)
            result.outputs = {name: arguments[name].get() for name in function.output_names}
            _check_return_value(function, result.return_value)
        except asyncio.CancelledError as cancelled:
            result.error = cancelled
            self._log(function, result, started)
            raise
        except Exception as error:
            result.error = error
        self._log(function, result, started)
        return result

    async def _run(
        self, function: LoadedFunction, arguments: dict[str, Any], context: Context
    ) -> Any:
        call: Awaitable[Any]
        if function.is_async:
            context.bind_thread()
            call = function.callable(**arguments)
        else:
            future = self._executor.submit(_call_in_thread, function, arguments, context)
            with self._thread_calls_lock:
                self._thread_calls.add(future)
            future.add_done_callback(self._thread_call_done)
            call = asyncio.wrap_future(future)

        timeout = self.function_timeout_seconds
        try:
            return await asyncio.wait_for(call, timeout)
        except TimeoutError:
            # NOTE: a sync function keeps running in its thread after the timeout, because
            # Python cannot stop a thread. The real host restarts the worker process instead.
            raise FunctionTimeoutError(
                f"Timeout value of {_format_timespan(timeout or 0)} was exceeded by function: "
                f"Functions.{function.name}"
            ) from None

    def _thread_call_done(self, future: concurrent.futures.Future[Any]) -> None:
        with self._thread_calls_lock:
            self._thread_calls.discard(future)

    def _log(self, function: LoadedFunction, result: InvocationResult, started: float) -> None:
        duration_ms = round((time.monotonic() - started) * 1000)
        outcome = "Succeeded" if result.succeeded else "Failed"
        if result.error is not None:
            logger.error(
                "Function '%s' failed (Id=%s): %s: %s",
                function.name,
                result.invocation_id,
                type(result.error).__name__,
                result.error,
                exc_info=(type(result.error), result.error, _function_traceback(result.error)),
            )
        logger.info(
            "Executed 'Functions.%s' (%s, Id=%s, Duration=%dms)",
            function.name,
            outcome,
            result.invocation_id,
            duration_ms,
        )

    def close(self) -> None:
        """Release the thread pool without waiting for threads still running."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _function_traceback(error: BaseException) -> TracebackType | None:
    """Drop the runner's own frames from the top of a traceback, so it starts in the function.

    Tracebacks raised in devhost itself (for example a bad return value) stay whole.
    """
    runner_folders = tuple(
        str(Path(module_file).resolve().parent) + os.sep
        for module_file in (__file__, asyncio.__file__, concurrent.futures.__file__)
    )
    frame = error.__traceback__
    while frame is not None and frame.tb_frame.f_code.co_filename.startswith(runner_folders):
        frame = frame.tb_next
    return frame if frame is not None else error.__traceback__


def _call_in_thread(function: LoadedFunction, arguments: dict[str, Any], context: Context) -> Any:
    context.bind_thread()
    return function.callable(**arguments)


def _check_return_value(function: LoadedFunction, value: Any) -> None:
    return_binding = function.config.return_binding
    if return_binding is None:
        if value is not None:
            raise InvalidReturnValueError(
                f"function {function.name} returned a {type(value).__name__} but has no "
                "$return binding in function.json."
            )
        return

    # The worker cannot encode None or other types for an http $return binding and fails
    # the invocation.
    if return_binding.normalized_type == HTTP_OUTPUT and not isinstance(
        value, func.HttpResponse | str
    ):
        raise InvalidReturnValueError(
            f"function {function.name} must return azure.functions.HttpResponse or str for its "
            f"http $return binding, not {type(value).__name__}."
        )


def _format_timespan(seconds: float) -> str:
    whole = int(seconds)
    hours, remainder = divmod(whole, 3600)
    minutes, secs = divmod(remainder, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"
