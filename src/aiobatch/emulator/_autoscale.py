"""The Batch autoscale formula language: parse a formula, evaluate it, report the run as the service does.

A pure module: no I/O, no clock, no global randomness.  The caller hands `evaluate` an `EvaluationContext` (the time
``now``, each sampled metric's ``(timestamp, value)`` history, the pool's node counts, a seeded ``random.Random``)
and gets back an `AutoScaleRun`: the ``results`` string and ``error`` of the service's ``autoScaleRun``, plus the
targets a successful run asks for.

The language follows Microsoft's "Create a formula to automatically scale compute nodes in a Batch pool":

* statements separated by ``;`` (at most 100; ``//`` comments and line breaks allowed; at most 8192 characters);
  a statement is ``name = expression`` or a bare expression;
* variables: the read-write service variables (``$TargetDedicatedNodes`` and its alias ``$TargetDedicated``,
  ``$TargetLowPriorityNodes`` / ``$TargetLowPriority``, ``$NodeDeallocationOption``), the read-only ones -- sampled
  metrics such as ``$PendingTasks`` (objects read through ``GetSample`` and friends) and plain counts such as
  ``$CurrentDedicatedNodes`` -- and user variables, with or without a leading ``$``;
* types double, doubleVec, doubleVecList (a function's argument list), string, timestamp (``.year .month .day
  .weekday .hour .minute .second``; weekday 0 is Sunday, 1 Monday) and timeinterval (``TimeInterval_*``);
* exactly the operations of the page's table, ``?:`` (non-zero is true), and the functions of its table.

What the service does and the emulator copies (from the REST reference, the SDKs' recorded tests and the
pool-autoscale event's documentation):

* a formula that does not parse, names an unknown function, or assigns a read-only variable is refused outright
  (HTTP 400 ``AutoScalingFormulaSyntaxError``; over 8192 characters, ``AutoScaleFormulaTooLong``): `parse` raises
  `FormulaSyntaxError` / `FormulaTooLongError`;
* a formula that parses but fails while running answers normally with ``autoScaleRun.error`` set:
  ``InsufficientSampleData`` when a ``GetSample`` gets fewer samples than asked for ("Line 1, Col 37: Insufficient
  data from data set: $CPUPercent wanted 10%, received 0%"), ``AutoScalingFormulaEvaluationError`` for anything
  else (an undefined variable, an operation on the wrong types, ...).  The error's ``values`` carry one
  ``Message`` naming the line and column;
* ``results`` lists ``$TargetDedicatedNodes``, ``$TargetLowPriorityNodes`` and ``$NodeDeallocationOption`` first
  (a target the formula leaves alone keeps the pool's current one; the option defaults to ``requeue``), then every
  other variable the formula assigned, sorted by name: ``$TargetDedicatedNodes=3;$TargetLowPriorityNodes=0;
  $NodeDeallocationOption=requeue;$curTime=2016-10-13T19:18:47.805Z;$isWeekday=1``.  A failed run lists only the
  first three, with the pool's current values (nothing changes on the pool).

Where the documentation is silent the emulator chooses the stricter reading, so a formula that works here has the
best chance of working on Azure; each such choice is marked "Emulator's reading" below.
"""

from __future__ import annotations

import bisect
import datetime as dt
import email.utils
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

#: The longest formula the service accepts, in characters ("cannot exceed 8 KB"; the SDKs: 8192 characters).
MAX_FORMULA_LENGTH = 8192
#: The most statements a formula may hold.
MAX_STATEMENTS = 100
#: How often the service records a sample of each metric.
SAMPLE_PERIOD = dt.timedelta(seconds=30)

#: Error codes, as the service and the SDKs' error-code constants spell them.
SYNTAX_ERROR_CODE = "AutoScalingFormulaSyntaxError"
TOO_LONG_CODE = "AutoScaleFormulaTooLong"
INSUFFICIENT_SAMPLES_CODE = "InsufficientSampleData"
EVALUATION_ERROR_CODE = "AutoScalingFormulaEvaluationError"

#: Read-write service variables, and the aliases the page documents for the two targets.
TARGET_DEDICATED = "$TargetDedicatedNodes"
TARGET_LOW_PRIORITY = "$TargetLowPriorityNodes"
NODE_DEALLOCATION_OPTION = "$NodeDeallocationOption"
_ALIASES = {"$TargetDedicated": TARGET_DEDICATED, "$TargetLowPriority": TARGET_LOW_PRIORITY}
_LISTED_FIRST = (TARGET_DEDICATED, TARGET_LOW_PRIORITY, NODE_DEALLOCATION_OPTION)
_READ_WRITE = (*_LISTED_FIRST, *_ALIASES)

#: Read-only service variables that are sample histories: objects read through GetSample and the other methods.
SAMPLED_METRICS = (
    "$CPUPercent",
    "$WallClockSeconds",
    "$MemoryBytes",
    "$DiskBytes",
    "$DiskReadBytes",
    "$DiskWriteBytes",
    "$DiskReadOps",
    "$DiskWriteOps",
    "$NetworkInBytes",
    "$NetworkOutBytes",
    "$SampleNodeCount",
    "$ActiveTasks",
    "$RunningTasks",
    "$PendingTasks",
    "$SucceededTasks",
    "$FailedTasks",
    "$PreemptedNodeCount",
)
#: Read-only service variables that are plain numbers (the page's examples use them directly, e.g.
#: ``$CurrentDedicatedNodes * 1.1``).
COUNTS = ("$CurrentDedicatedNodes", "$CurrentLowPriorityNodes", "$TaskSlotsPerNode", "$UsableNodeCount")

#: The values ``$NodeDeallocationOption`` takes; in a formula they are bare words (``= taskcompletion``).
DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")

_TICKS_PER_SECOND = 10_000_000
_INTERVALS = {
    "TimeInterval_Zero": 0,
    "TimeInterval_100ns": 1,
    "TimeInterval_Microsecond": 10,
    "TimeInterval_Millisecond": 10_000,
    "TimeInterval_Second": _TICKS_PER_SECOND,
    "TimeInterval_Minute": 60 * _TICKS_PER_SECOND,
    "TimeInterval_Hour": 3600 * _TICKS_PER_SECOND,
    "TimeInterval_Day": 86_400 * _TICKS_PER_SECOND,
    "TimeInterval_Week": 7 * 86_400 * _TICKS_PER_SECOND,
    "TimeInterval_Year": 365 * 86_400 * _TICKS_PER_SECOND,
}
_TIMESTAMP_FIELDS = ("year", "month", "day", "weekday", "hour", "minute", "second")

# Service variable names are matched without regard to case (the REST reference's own example assigns
# ``$targetDedicatedNodes``); results use the documented spelling.
_SERVICE_NAMES = {name.lower(): name for name in (*_READ_WRITE, *SAMPLED_METRICS, *COUNTS)}


# --------------------------------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, order=True)
class Interval:
    """A timeinterval, in 100-nanosecond ticks like the service's own TimeSpan."""

    ticks: int

    def as_timedelta(self) -> dt.timedelta:
        """The interval as a timedelta (to the microsecond)."""
        return dt.timedelta(microseconds=self.ticks // 10)


#: A formula value: double, doubleVec, string, timestamp or timeinterval.
Value = float | tuple[float, ...] | str | dt.datetime | Interval


def _type_name(value: Value) -> str:
    if isinstance(value, float):
        return "double"
    if isinstance(value, tuple):
        return "doubleVec"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dt.datetime):
        return "timestamp"
    return "timeinterval"


# --------------------------------------------------------------------------------------------------------------------
# Errors


class FormulaError(Exception):
    """A formula the service refuses outright, with the 400 it answers (rendered by `_wire` as an OData error).

    Attributes:
        code: The service's error code.
        message: The error message's first line.
        values: ``(key, value)`` details; one ``Message`` naming the line and column when there is a position.
    """

    status = 400

    def __init__(self, code: str, message: str, values: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(f"{code}: {message} {' '.join(v for _, v in values)}".strip())
        self.code = code
        self.message = message
        self.values = tuple(values)


class FormulaSyntaxError(FormulaError):
    """The formula does not parse, names an unknown function or method, or assigns a read-only variable."""

    def __init__(self, detail: str, line: int = 0, col: int = 0) -> None:
        where = f"Line {line}, Col {col}: " if line else ""
        super().__init__(
            SYNTAX_ERROR_CODE,
            "The specified auto-scaling formula has a syntax error.",
            [("Message", f"{where}{detail}")],
        )
        self.detail = detail
        self.line = line
        self.col = col


class FormulaTooLongError(FormulaError):
    """The formula is longer than `MAX_FORMULA_LENGTH` characters."""

    def __init__(self, length: int) -> None:
        super().__init__(
            TOO_LONG_CODE,
            "The specified auto-scaling formula exceeds lengths limit.",
            [("Message", f"The formula has {length} characters; at most {MAX_FORMULA_LENGTH} are allowed.")],
        )


class _RunFailure(Exception):
    """A formula that failed while running: becomes ``autoScaleRun.error``."""

    def __init__(self, code: str, message: str, detail: str, pos: tuple[int, int]) -> None:
        super().__init__(detail)
        self.code = code
        self.message = message
        self.detail = f"Line {pos[0]}, Col {pos[1]}: {detail}"


class _Stop(Exception):
    """``stop()``: the rest of the formula is skipped."""


def _fail(detail: str, pos: tuple[int, int]) -> NoReturn:
    raise _RunFailure(EVALUATION_ERROR_CODE, "Autoscale evaluation failed", detail, pos)


# --------------------------------------------------------------------------------------------------------------------
# Syntax tree


@dataclass(frozen=True)
class _Node:
    pos: tuple[int, int]


@dataclass(frozen=True)
class _Number(_Node):
    value: float


@dataclass(frozen=True)
class _String(_Node):
    value: str


@dataclass(frozen=True)
class _Name(_Node):
    name: str


@dataclass(frozen=True)
class _Unary(_Node):
    op: str
    operand: _Node


@dataclass(frozen=True)
class _Chain(_Node):
    """Operands joined by operators of one precedence level, left to right: ``a - b + c``.

    Kept flat (not a tree) so that a long sum costs no recursion to evaluate.
    """

    first: _Node
    rest: tuple[tuple[str, tuple[int, int], _Node], ...]


@dataclass(frozen=True)
class _Conditional(_Node):
    test: _Node
    then: _Node
    otherwise: _Node


@dataclass(frozen=True)
class _Call(_Node):
    function: str
    args: tuple[_Node, ...]


@dataclass(frozen=True)
class _Method(_Node):
    metric: str
    method: str
    args: tuple[_Node, ...]


@dataclass(frozen=True)
class _Member(_Node):
    target: _Node
    field: str


@dataclass(frozen=True)
class _Statement:
    target: str | None  # the canonical variable name assigned, or None for a bare expression
    expr: _Node


@dataclass(frozen=True)
class Formula:
    """A parsed formula: its statements, ready for `evaluate`.

    Attributes:
        source: The formula text as given.
    """

    source: str
    statements: tuple[_Statement, ...]


# --------------------------------------------------------------------------------------------------------------------
# Parsing

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>//[^\n]*)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>"[^"\n]*")
  | (?P<name>\$?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||<=|>=|==|!=|[-+*/<>!?:=(),.;])
    """,
    re.VERBOSE,
)

# Arity of each function: (fewest, most) arguments; None for "any number" (a doubleVecList may be empty).
_FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "avg": (0, None),
    "len": (0, None),
    "max": (0, None),
    "min": (0, None),
    "norm": (0, None),
    "range": (0, None),
    "std": (0, None),
    "sum": (0, None),
    "lg": (1, None),
    "ln": (1, None),
    "log": (1, None),
    "ceil": (1, None),
    "floor": (1, None),
    "round": (1, None),
    "percentile": (2, 2),
    "val": (2, 2),
    "rand": (0, 0),
    "stop": (0, 0),
    "time": (0, 1),
}
_METHODS: dict[str, tuple[int, int]] = {
    "GetSample": (1, 3),
    "GetSamplePercent": (1, 2),
    "GetSamplePeriod": (0, 0),
    "Count": (0, 0),
    "HistoryBeginTime": (0, 0),
}
# Parentheses, calls, unary operators and "?:" nested deeper than this are refused, well inside Python's recursion
# limit (each level costs the parser about a dozen frames).
_MAX_DEPTH = 50


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, name, op, end
    text: str
    pos: tuple[int, int]


def _tokenize(source: str) -> list[_Token]:
    line_starts = [0] + [i + 1 for i, ch in enumerate(source) if ch == "\n"]

    def position(offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(line_starts, offset)
        return line, offset - line_starts[line - 1] + 1

    tokens: list[_Token] = []
    offset = 0
    while offset < len(source):
        match = _TOKEN.match(source, offset)
        if match is None:
            line, col = position(offset)
            if source[offset] == '"':
                raise FormulaSyntaxError("Unterminated string", line, col)
            raise FormulaSyntaxError(f"Unexpected character {source[offset]!r}", line, col)
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            tokens.append(_Token(kind, match.group(), position(offset)))
        offset = match.end()
    tokens.append(_Token("end", "", position(len(source))))
    return tokens


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = _tokenize(source)
        self.index = 0
        self.depth = 0

    # -- helpers

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def at(self, *ops: str) -> bool:
        return self.token.kind == "op" and self.token.text in ops

    def expect(self, op: str) -> _Token:
        if not self.at(op):
            self.error(f"Expected '{op}'")
        return self.advance()

    def error(self, detail: str, token: _Token | None = None) -> NoReturn:
        token = token or self.token
        found = "end of formula" if token.kind == "end" else repr(token.text)
        raise FormulaSyntaxError(f"{detail}, found {found}", *token.pos)

    # -- grammar

    def formula(self, source: str) -> Formula:
        statements: list[_Statement] = []
        while True:
            if self.at(";"):
                self.advance()
                continue
            if self.token.kind == "end":
                break
            statements.append(self.statement())
            if len(statements) > MAX_STATEMENTS:
                raise FormulaSyntaxError(f"A formula may hold at most {MAX_STATEMENTS} statements", *self.token.pos)
            if self.token.kind != "end":
                self.expect(";")
        if not statements:
            raise FormulaSyntaxError("The formula has no statements", *self.token.pos)
        return Formula(source, tuple(statements))

    def statement(self) -> _Statement:
        nxt = self.tokens[self.index + 1] if self.index + 1 < len(self.tokens) else None
        if self.token.kind == "name" and nxt is not None and nxt.kind == "op" and nxt.text == "=":
            name_token = self.advance()
            self.advance()
            target = _assignable(name_token)
            return _Statement(target, self.expression())
        return _Statement(None, self.expression())

    def expression(self) -> _Node:
        self.enter()
        try:
            return self.conditional()
        finally:
            self.depth -= 1

    def enter(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise FormulaSyntaxError("The formula is nested too deeply", *self.token.pos)

    def conditional(self) -> _Node:
        test = self.binary(0)
        if not self.at("?"):
            return test
        question = self.advance()
        then = self.expression()
        self.expect(":")
        otherwise = self.expression()
        return _Conditional(question.pos, test, then, otherwise)

    # Binary operators by precedence, loosest first, as in C.
    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("||",),
        ("&&",),
        ("==", "!="),
        ("<", "<=", ">", ">="),
        ("+", "-"),
        ("*", "/"),
    )

    def binary(self, level: int) -> _Node:
        if level == len(self._LEVELS):
            return self.unary()
        first = self.binary(level + 1)
        rest: list[tuple[str, tuple[int, int], _Node]] = []
        while self.at(*self._LEVELS[level]):
            op = self.advance()
            rest.append((op.text, op.pos, self.binary(level + 1)))
        return _Chain(first.pos, first, tuple(rest)) if rest else first

    def unary(self) -> _Node:
        if self.at("-", "!"):
            op = self.advance()
            self.enter()
            try:
                return _Unary(op.pos, op.text, self.unary())
            finally:
                self.depth -= 1
        return self.postfix()

    def postfix(self) -> _Node:
        node = self.primary()
        while self.at("."):
            self.advance()
            member = self.advance()
            if member.kind != "name" or member.text.startswith("$"):
                self.error("Expected a method or field name after '.'", member)
            if self.at("("):
                node = self.method(node, member)
            elif member.text in _TIMESTAMP_FIELDS:
                node = _Member(member.pos, node, member.text)
            else:
                raise FormulaSyntaxError(f"Unknown timestamp field '{member.text}'", *member.pos)
        return node

    def method(self, receiver: _Node, member: _Token) -> _Node:
        if member.text not in _METHODS:
            raise FormulaSyntaxError(f"Unknown method '{member.text}'", *member.pos)
        metric = _SERVICE_NAMES.get(receiver.name.lower()) if isinstance(receiver, _Name) else None
        if metric not in SAMPLED_METRICS:
            raise FormulaSyntaxError(
                f"'{member.text}' is a method of a sampled service variable such as $PendingTasks", *member.pos
            )
        assert metric is not None
        args = self.arguments()
        fewest, most = _METHODS[member.text]
        if not fewest <= len(args) <= most:
            raise FormulaSyntaxError(f"Wrong number of arguments to '{member.text}'", *member.pos)
        return _Method(receiver.pos, metric, member.text, args)

    def arguments(self) -> tuple[_Node, ...]:
        self.expect("(")
        args: list[_Node] = []
        if not self.at(")"):
            args.append(self.expression())
            while self.at(","):
                self.advance()
                args.append(self.expression())
        self.expect(")")
        return tuple(args)

    def primary(self) -> _Node:
        token = self.token
        if token.kind == "number":
            self.advance()
            value = float(token.text)
            if not math.isfinite(value):
                raise FormulaSyntaxError(f"Number out of range: {token.text}", *token.pos)
            return _Number(token.pos, value)
        if token.kind == "string":
            self.advance()
            return _String(token.pos, token.text[1:-1])
        if token.kind == "name":
            self.advance()
            if self.at("("):
                if token.text not in _FUNCTIONS:
                    raise FormulaSyntaxError(f"Unknown function '{token.text}'", *token.pos)
                args = self.arguments()
                fewest, most = _FUNCTIONS[token.text]
                if len(args) < fewest or (most is not None and len(args) > most):
                    raise FormulaSyntaxError(f"Wrong number of arguments to '{token.text}'", *token.pos)
                return _Call(token.pos, token.text, args)
            return _Name(token.pos, token.text)
        if self.at("("):
            self.advance()
            node = self.expression()
            self.expect(")")
            return node
        self.error("Expected an expression")


def _assignable(token: _Token) -> str:
    """The variable a statement may assign, by its canonical name; refuses constants and read-only variables."""
    canonical = _SERVICE_NAMES.get(token.text.lower())
    if canonical is not None:
        if canonical not in _READ_WRITE:
            raise FormulaSyntaxError(f"{canonical} is read-only", *token.pos)
        return canonical
    if token.text in _INTERVALS or token.text in DEALLOCATION_OPTIONS:
        raise FormulaSyntaxError(f"{token.text} is a constant", *token.pos)
    return token.text


def parse(source: str) -> Formula:
    """Parse a formula, or refuse it as the service does with a 400.

    Args:
        source: The formula text.

    Returns:
        The parsed formula.

    Raises:
        FormulaTooLongError: The formula is longer than 8192 characters.
        FormulaSyntaxError: It does not parse, calls an unknown function or method (or with the wrong number of
            arguments), assigns a read-only variable, or holds no statement or more than 100.
    """
    if len(source) > MAX_FORMULA_LENGTH:
        raise FormulaTooLongError(len(source))
    return _Parser(source).formula(source)


# --------------------------------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class EvaluationContext:
    """What a formula reads: the time, the sampled metrics, the pool's counts and a random source.

    Attributes:
        now: The evaluation time (``time()``; look-back windows end here).  A naive datetime is taken as UTC.
        samples: For each sampled metric (`SAMPLED_METRICS`, e.g. ``"$PendingTasks"``), its samples as
            ``(timestamp, value)`` pairs, oldest first.  A metric left out has no samples.
        target_dedicated_nodes: The pool's current dedicated target: ``$TargetDedicatedNodes`` until assigned.
        target_low_priority_nodes: The pool's current Spot/low-priority target.
        current_dedicated_nodes: ``$CurrentDedicatedNodes``.
        current_low_priority_nodes: ``$CurrentLowPriorityNodes``.
        task_slots_per_node: ``$TaskSlotsPerNode``.
        usable_node_count: ``$UsableNodeCount``.
        sample_period: How often samples are taken (``GetSamplePeriod()``; the basis of sample percentages).
        rng: The source of ``rand()``; seed it for repeatable runs.
    """

    now: dt.datetime
    samples: Mapping[str, Sequence[tuple[dt.datetime, float]]] = field(default_factory=dict)
    target_dedicated_nodes: int = 0
    target_low_priority_nodes: int = 0
    current_dedicated_nodes: int = 0
    current_low_priority_nodes: int = 0
    task_slots_per_node: int = 1
    usable_node_count: int = 0
    sample_period: dt.timedelta = SAMPLE_PERIOD
    rng: random.Random = field(default_factory=lambda: random.Random(0))


@dataclass(frozen=True)
class AutoScaleRunError:
    """``autoScaleRun.error``: why an evaluation failed.

    Attributes:
        code: ``InsufficientSampleData`` or ``AutoScalingFormulaEvaluationError``.
        message: The service's one-line message.
        values: ``(name, value)`` pairs; one ``Message`` saying where and what.
    """

    code: str
    message: str
    values: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class AutoScaleRun:
    """One evaluation, as the service reports it in ``autoScaleRun``, plus the targets it sets.

    Attributes:
        timestamp: When the formula was evaluated.
        results: ``$variable=value`` pairs separated by ``;``.
        error: Why the evaluation failed, or None.
        target_dedicated_nodes: The dedicated target to apply (the pool's current one when the run failed).
        target_low_priority_nodes: The Spot/low-priority target to apply.
        node_deallocation_option: How nodes leave when the pool shrinks: ``requeue``, ``terminate``,
            ``taskcompletion`` or ``retaineddata``.
    """

    timestamp: dt.datetime
    results: str
    error: AutoScaleRunError | None
    target_dedicated_nodes: int
    target_low_priority_nodes: int
    node_deallocation_option: str


def evaluate(formula: Formula | str, context: EvaluationContext) -> AutoScaleRun:
    """Run a formula against a context and report it as the service's ``autoScaleRun``.

    Args:
        formula: A parsed formula, or its text.
        context: What the formula reads.

    Returns:
        The run: on success the new targets and every variable's value; on a failure while running (too few
        samples, an undefined variable, a type error, ...) an ``error`` and the pool's current targets.

    Raises:
        FormulaSyntaxError: ``formula`` is text that does not parse (see `parse`).
        FormulaTooLongError: ``formula`` is text longer than 8192 characters.
        ValueError: ``context.samples`` names something that is not a sampled metric.
    """
    parsed = parse(formula) if isinstance(formula, str) else formula
    unknown = set(context.samples) - set(SAMPLED_METRICS)
    if unknown:
        raise ValueError(f"not sampled metrics: {sorted(unknown)}")
    now = context.now if context.now.tzinfo else context.now.replace(tzinfo=dt.timezone.utc)
    run = _Run(context, now)
    try:
        try:
            for statement in parsed.statements:
                value = run.value(statement.expr)
                if statement.target is not None:
                    run.variables[statement.target] = value
                    run.assigned_at[statement.target] = statement.expr.pos
        except _Stop:
            pass  # stop(): what was assigned so far stands
        targets = run.targets()
    except _RunFailure as exc:
        return _failed(context, now, exc)
    dedicated, low_priority, option = targets
    # A target left alone shows the pool's current one; an assigned one shows the value assigned (before truncation).
    shown = {TARGET_DEDICATED: float(dedicated), TARGET_LOW_PRIORITY: float(low_priority), **run.variables}
    results = [(name, _format(shown[name])) for name in (TARGET_DEDICATED, TARGET_LOW_PRIORITY)]
    results.append((NODE_DEALLOCATION_OPTION, option))
    results += sorted((name, _format(value)) for name, value in run.variables.items() if name not in _LISTED_FIRST)
    return AutoScaleRun(
        timestamp=now,
        results=";".join(f"{name}={text}" for name, text in results),
        error=None,
        target_dedicated_nodes=dedicated,
        target_low_priority_nodes=low_priority,
        node_deallocation_option=option,
    )


def _failed(context: EvaluationContext, now: dt.datetime, exc: _RunFailure) -> AutoScaleRun:
    results = (
        f"{TARGET_DEDICATED}={context.target_dedicated_nodes};"
        f"{TARGET_LOW_PRIORITY}={context.target_low_priority_nodes};"
        f"{NODE_DEALLOCATION_OPTION}=requeue"
    )
    return AutoScaleRun(
        timestamp=now,
        results=results,
        error=AutoScaleRunError(exc.code, exc.message, (("Message", exc.detail),)),
        target_dedicated_nodes=context.target_dedicated_nodes,
        target_low_priority_nodes=context.target_low_priority_nodes,
        node_deallocation_option="requeue",
    )


class _Run:
    """The state of one evaluation: the variables assigned so far."""

    def __init__(self, context: EvaluationContext, now: dt.datetime) -> None:
        self.context = context
        self.now = now
        self.variables: dict[str, Value] = {}
        self.assigned_at: dict[str, tuple[int, int]] = {}

    # -- the end of a run

    def targets(self) -> tuple[int, int, str]:
        """The targets and option the run asks for; a value of the wrong kind fails the run."""
        dedicated = self._target(TARGET_DEDICATED, self.context.target_dedicated_nodes)
        low_priority = self._target(TARGET_LOW_PRIORITY, self.context.target_low_priority_nodes)
        option: Value = self.variables.get(NODE_DEALLOCATION_OPTION, "requeue")
        if not isinstance(option, str) or option.lower() not in DEALLOCATION_OPTIONS:
            _fail(
                f"{NODE_DEALLOCATION_OPTION} must be one of {', '.join(DEALLOCATION_OPTIONS)}, not {_format(option)}",
                self.assigned_at[NODE_DEALLOCATION_OPTION],
            )
        return dedicated, low_priority, option.lower()

    def _target(self, name: str, current: int) -> int:
        # "If both the fully named variable and its alias are set by the formula, the value assigned to the fully
        # named variable will take precedence."
        alias = next(a for a, full in _ALIASES.items() if full == name)
        if name in self.variables:
            value, pos = self.variables[name], self.assigned_at[name]
        elif alias in self.variables:
            value, pos = self.variables[alias], self.assigned_at[alias]
        else:
            return current
        if not isinstance(value, float) or not math.isfinite(value) or value < 0:
            # Emulator's reading: the page's examples all clamp with max(0, ...), and a target must be a count.
            _fail(f"{name} must be a non-negative double, not {_type_name(value)} {_format(value)}", pos)
        # The page's Example 3 rounds up with "(x + 3) / 4", so a fractional target is truncated.
        return math.trunc(value)

    # -- expressions

    def value(self, node: _Node) -> Value:
        """Evaluate one expression."""
        try:
            return self._value(node)
        except (OverflowError, ValueError):
            # Infinite or NaN doubles met where a whole number is needed, or times beyond year 9999.
            _fail("A value is out of range", node.pos)

    def _value(self, node: _Node) -> Value:
        if isinstance(node, _Number):
            return node.value
        if isinstance(node, _String):
            return node.value
        if isinstance(node, _Name):
            return self.name(node)
        if isinstance(node, _Unary):
            return self.unary(node)
        if isinstance(node, _Chain):
            return self.chain(node)
        if isinstance(node, _Conditional):
            test = self.value(node.test)
            if not isinstance(test, float):
                _fail(f"The condition of '?:' must be a double, not {_type_name(test)}", node.pos)
            return self.value(node.then if test != 0 else node.otherwise)
        if isinstance(node, _Call):
            return self.call(node)
        if isinstance(node, _Method):
            return self.method(node)
        assert isinstance(node, _Member)
        return self.member(node)

    def name(self, node: _Name) -> Value:
        canonical = _SERVICE_NAMES.get(node.name.lower())
        if canonical is None:
            if node.name in self.variables:
                return self.variables[node.name]
            if node.name in _INTERVALS:
                return Interval(_INTERVALS[node.name])
            if node.name in DEALLOCATION_OPTIONS:
                return node.name
            _fail(f"Undefined variable {node.name}", node.pos)
        if canonical in self.variables:
            return self.variables[canonical]
        if canonical in SAMPLED_METRICS:
            # Emulator's reading: the page calls these "objects that provide various methods to access data".
            _fail(f"{canonical} is a sampled metric: read it with GetSample()", node.pos)
        context = self.context
        defaults: dict[str, Value] = {
            TARGET_DEDICATED: float(context.target_dedicated_nodes),
            TARGET_LOW_PRIORITY: float(context.target_low_priority_nodes),
            NODE_DEALLOCATION_OPTION: "requeue",
            "$CurrentDedicatedNodes": float(context.current_dedicated_nodes),
            "$CurrentLowPriorityNodes": float(context.current_low_priority_nodes),
            "$TaskSlotsPerNode": float(context.task_slots_per_node),
            "$UsableNodeCount": float(context.usable_node_count),
        }
        if canonical in _ALIASES:
            canonical = _ALIASES[canonical]
            if canonical in self.variables:
                return self.variables[canonical]
        return defaults[canonical]

    def unary(self, node: _Unary) -> Value:
        operand = self.value(node.operand)
        if isinstance(operand, float):
            return -operand if node.op == "-" else float(operand == 0)
        if isinstance(operand, Interval) and node.op == "-":
            return Interval(-operand.ticks)
        _fail(f"Operator '{node.op}' is not defined for {_type_name(operand)}", node.pos)

    def chain(self, node: _Chain) -> Value:
        result = self.value(node.first)
        for op, pos, operand in node.rest:
            if op in ("&&", "||"):
                # Short-circuit, as in C: the right side of "0 && x" is never evaluated.
                left = self._double(result, op, pos)
                if (op == "&&" and left == 0) or (op == "||" and left != 0):
                    result = float(op == "||")
                else:
                    result = float(self._double(self.value(operand), op, pos) != 0)
            elif op in ("<", "<=", "==", ">=", ">", "!="):
                result = _compare(op, result, self.value(operand), pos)
            else:
                right = self.value(operand)
                try:
                    result = _arithmetic(op, result, right, pos)
                except (OverflowError, ValueError):
                    _fail("A value is out of range", pos)
        return result

    @staticmethod
    def _double(value: Value, op: str, pos: tuple[int, int]) -> float:
        if not isinstance(value, float):
            _fail(f"Operator '{op}' is not defined for {_type_name(value)}", pos)
        return value

    def member(self, node: _Member) -> Value:
        target = self.value(node.target)
        if not isinstance(target, dt.datetime):
            _fail(f"'.{node.field}' is a field of a timestamp, not of a {_type_name(target)}", node.pos)
        if node.field == "weekday":
            return float(target.isoweekday() % 7)  # 0 Sunday, 1 Monday ... 6 Saturday
        return float(getattr(target, node.field))

    # -- functions

    def call(self, node: _Call) -> Value:
        name = node.function
        if name == "rand":
            return self.context.rng.random()
        if name == "stop":
            raise _Stop
        if name == "time":
            if not node.args:
                return self.now
            text = self.value(node.args[0])
            if not isinstance(text, str):
                _fail(f"time() takes a string, not {_type_name(text)}", node.pos)
            return _parse_time(text, node.pos)
        if name in ("percentile", "val"):
            vector = self.value(node.args[0])
            index = self.value(node.args[1])
            if not isinstance(vector, tuple) or not isinstance(index, float):
                _fail(f"{name}() takes a doubleVec and a double", node.pos)
            return _percentile(vector, index, node.pos) if name == "percentile" else _val(vector, index, node.pos)
        args = [self.value(arg) for arg in node.args]
        values = _vector_list(name, args, node.args)
        if name in _ELEMENTWISE:
            mapped = tuple(_ELEMENTWISE[name](v, node.pos) for v in values)
            # "A vec(double) must be explicitly passed ... Otherwise, the double lg(double) version is assumed."
            return mapped[0] if len(args) == 1 and isinstance(args[0], float) else mapped
        return _AGGREGATES[name](values, node.pos)

    # -- sampled metrics

    def method(self, node: _Method) -> Value:
        samples = sorted(self.context.samples.get(node.metric, ()), key=lambda s: s[0])
        if node.method == "Count":
            return float(len(samples))
        if node.method == "GetSamplePeriod":
            return _interval(self.context.sample_period)
        if node.method == "HistoryBeginTime":
            if not samples:
                _insufficient(node, "no samples", node.pos)
            return _aware(samples[0][0])
        args = [self.value(arg) for arg in node.args]
        if node.method == "GetSample" and len(args) == 1 and isinstance(args[0], float):
            return self.last_samples(node, samples, args[0])
        start = args[0]
        end: dt.datetime | Interval = Interval(0)
        percent_arg: Value | None = None
        rest = args[1:]
        first_rest = rest[0] if rest else None
        if isinstance(first_rest, (dt.datetime, Interval)):
            end = first_rest
            rest.pop(0)
        if rest:
            if node.method == "GetSamplePercent":
                _fail("GetSamplePercent() takes a start and an optional end time", node.pos)
            percent_arg = rest.pop(0)
        if rest or not isinstance(start, (dt.datetime, Interval)):
            _fail(f"{node.method}() takes a count, or a start time and optional end time and percent", node.pos)
        window = self.window(start, end)
        values = tuple(v for t, v in samples if window[0] < _aware(t) <= window[1])
        expected = max(1, (window[1] - window[0]) // self.context.sample_period)
        percent = min(100.0, 100.0 * len(values) / expected)
        if node.method == "GetSamplePercent":
            return percent
        wanted = 0.0
        if percent_arg is not None:
            if not isinstance(percent_arg, float):
                _fail(f"The sample percentage must be a double, not {_type_name(percent_arg)}", node.pos)
            wanted = percent_arg
        # Emulator's reading: an empty window is never enough, whatever percentage was asked for.
        if not values or percent < wanted:
            _insufficient(node, f"wanted {_format(wanted)}%, received {math.floor(percent)}%", node.pos)
        return values

    def last_samples(self, node: _Method, samples: list[tuple[dt.datetime, float]], count: float) -> Value:
        """``GetSample(count)``: the most recent ``count`` samples, however old."""
        wanted = math.trunc(count)
        if wanted < 1:
            _fail("GetSample() needs a count of at least 1", node.pos)
        if not samples:
            _insufficient(node, "wanted 100%, received 0%", node.pos)
        return tuple(v for _, v in samples[-wanted:])

    def window(self, start: dt.datetime | Interval, end: dt.datetime | Interval) -> tuple[dt.datetime, dt.datetime]:
        """The time range between two look-back points (intervals before now, or timestamps), earliest first."""
        first, second = (self.now - p.as_timedelta() if isinstance(p, Interval) else _aware(p) for p in (start, end))
        return (first, second) if first <= second else (second, first)


def _vector_list(function: str, args: list[Value], nodes: tuple[_Node, ...]) -> tuple[float, ...]:
    """A doubleVecList argument list flattened to one doubleVec: ``avg(v, 7)`` is ``avg(1, 2, 3, 7)``."""
    values: list[float] = []
    for value, node in zip(args, nodes, strict=True):
        if isinstance(value, float):
            values.append(value)
        elif isinstance(value, tuple):
            values.extend(value)
        else:
            _fail(f"{function}() takes doubles and doubleVecs, not {_type_name(value)}", node.pos)
    return tuple(values)


def _insufficient(node: _Method, what: str, pos: tuple[int, int]) -> NoReturn:
    raise _RunFailure(
        INSUFFICIENT_SAMPLES_CODE,
        "Autoscale evaluation failed due to insufficient sample data",
        f"Insufficient data from data set: {node.metric} {what}",
        pos,
    )


# --------------------------------------------------------------------------------------------------------------------
# Operations


def _compare(op: str, left: Value, right: Value, pos: tuple[int, int]) -> float:
    comparable = (
        (isinstance(left, float) and isinstance(right, float))
        or (isinstance(left, str) and isinstance(right, str))
        or (isinstance(left, dt.datetime) and isinstance(right, dt.datetime))
        or (isinstance(left, Interval) and isinstance(right, Interval))
    )
    if not comparable:
        _fail(f"Operator '{op}' is not defined for {_type_name(left)} and {_type_name(right)}", pos)
    checks: dict[str, Callable[[object, object], bool]] = {
        "<": lambda a, b: a < b,  # type: ignore[operator]
        "<=": lambda a, b: a <= b,  # type: ignore[operator]
        ">": lambda a, b: a > b,  # type: ignore[operator]
        ">=": lambda a, b: a >= b,  # type: ignore[operator]
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
    }
    return float(checks[op](left, right))


def _arithmetic(op: str, left: Value, right: Value, pos: tuple[int, int]) -> Value:
    def divide(a: float, b: float) -> float:
        if b == 0:
            # Emulator's reading: the page does not say; failing names the mistake instead of an infinite target.
            _fail("Division by zero", pos)
        return a / b

    def apply(a: float, b: float) -> float:
        if op == "/":
            return divide(a, b)
        result = a + b if op == "+" else a - b if op == "-" else a * b
        return result

    if isinstance(left, float) and isinstance(right, float):
        return apply(left, right)
    if isinstance(left, tuple) and isinstance(right, float):
        return tuple(apply(a, right) for a in left)
    if isinstance(left, tuple) and isinstance(right, tuple):
        if len(left) != len(right):
            _fail(f"Operator '{op}' on doubleVecs of different lengths ({len(left)} and {len(right)})", pos)
        return tuple(apply(a, b) for a, b in zip(left, right, strict=True))
    if op == "*" and isinstance(left, float) and isinstance(right, Interval):
        return Interval(round(left * right.ticks))
    if isinstance(left, Interval) and isinstance(right, float) and op in ("*", "/"):
        return Interval(round(left.ticks * right if op == "*" else divide(left.ticks, right)))
    if isinstance(left, Interval) and isinstance(right, Interval) and op in ("+", "-"):
        return Interval(left.ticks + right.ticks if op == "+" else left.ticks - right.ticks)
    if op == "+" and isinstance(left, Interval) and isinstance(right, dt.datetime):
        return right + left.as_timedelta()
    if op == "+" and isinstance(left, dt.datetime) and isinstance(right, Interval):
        return left + right.as_timedelta()
    if op == "-" and isinstance(left, dt.datetime) and isinstance(right, dt.datetime):
        return _interval(left - right)
    _fail(f"Operator '{op}' is not defined for {_type_name(left)} and {_type_name(right)}", pos)


def _checked(fn: Callable[[float], float], name: str) -> Callable[[float, tuple[int, int]], float]:
    def apply(value: float, pos: tuple[int, int]) -> float:
        if name in ("lg", "ln", "log") and value <= 0:
            _fail(f"{name}() of {_format(value)} is undefined", pos)
        return fn(value)

    return apply


def _round_half_away(value: float) -> float:
    return float(math.floor(abs(value) + 0.5)) * (1.0 if value >= 0 else -1.0)


_ELEMENTWISE: dict[str, Callable[[float, tuple[int, int]], float]] = {
    "lg": _checked(math.log2, "lg"),
    "ln": _checked(math.log, "ln"),
    "log": _checked(math.log10, "log"),
    "ceil": _checked(lambda v: float(math.ceil(v)), "ceil"),
    "floor": _checked(lambda v: float(math.floor(v)), "floor"),
    "round": _checked(_round_half_away, "round"),
}


def _nonempty(
    name: str, fn: Callable[[tuple[float, ...]], float]
) -> Callable[[tuple[float, ...], tuple[int, int]], float]:
    def apply(values: tuple[float, ...], pos: tuple[int, int]) -> float:
        if not values:
            _fail(f"{name}() of an empty list", pos)
        return fn(values)

    return apply


def _std(values: tuple[float, ...]) -> float:
    if len(values) < 2:
        return 0.0
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


_AGGREGATES: dict[str, Callable[[tuple[float, ...], tuple[int, int]], float]] = {
    "avg": _nonempty("avg", lambda v: math.fsum(v) / len(v)),
    "max": _nonempty("max", max),
    "min": _nonempty("min", min),
    "range": _nonempty("range", lambda v: max(v) - min(v)),
    "std": _nonempty("std", _std),
    "len": lambda v, _pos: float(len(v)),
    "sum": lambda v, _pos: math.fsum(v),
    "norm": lambda v, _pos: math.sqrt(math.fsum(x * x for x in v)),
}


def _percentile(vector: tuple[float, ...], p: float, pos: tuple[int, int]) -> float:
    """The ``p``-th percentile element of a vector, by nearest rank (the page: "the percentile element")."""
    if not vector:
        _fail("percentile() of an empty doubleVec", pos)
    if not 0 <= p <= 100:
        _fail(f"percentile() needs a percentage from 0 to 100, not {_format(p)}", pos)
    ordered = sorted(vector)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _val(vector: tuple[float, ...], index: float, pos: tuple[int, int]) -> float:
    i = math.trunc(index)
    if not 0 <= i < len(vector):
        _fail(f"val(): index {_format(index)} is outside a doubleVec of length {len(vector)}", pos)
    return vector[i]


# --------------------------------------------------------------------------------------------------------------------
# Times and formatting


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _interval(delta: dt.timedelta) -> Interval:
    return Interval((delta.days * 86_400 + delta.seconds) * _TICKS_PER_SECOND + delta.microseconds * 10)


_W3C_DTF = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2}))?)?)?$"
)


def _parse_time(text: str, pos: tuple[int, int]) -> dt.datetime:
    """A timestamp from W3C-DTF (``2026-12-04T16:59:03Z``, or a prefix down to the year) or RFC 1123."""
    stripped = text.strip()
    match = _W3C_DTF.match(stripped)
    try:
        if match:
            year, month, day, hour, minute, second, fraction, zone = match.groups()
            tz = dt.timezone.utc
            if zone and zone != "Z":
                sign = 1 if zone[0] == "+" else -1
                tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
            micro = round(float(fraction) * 1_000_000) if fraction else 0
            moment = dt.datetime(
                int(year),
                int(month or 1),
                int(day or 1),
                int(hour or 0),
                int(minute or 0),
                int(second or 0),
                min(micro, 999_999),
                tzinfo=tz,
            )
            return moment.astimezone(dt.timezone.utc)
        parsed = email.utils.parsedate_to_datetime(stripped)
    except (ValueError, TypeError, OverflowError):
        parsed = None
    if parsed is None:
        _fail(f'time() cannot read "{text}": use W3C-DTF or RFC 1123', pos)
    return _aware(parsed).astimezone(dt.timezone.utc)


def _format(value: Value) -> str:
    """A value as ``results`` writes it."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ",".join(_format(v) for v in value) + "]"
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        utc = value.astimezone(dt.timezone.utc)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    # A timeinterval as .NET writes a TimeSpan: [-][d.]hh:mm:ss[.fffffff].
    sign = "-" if value.ticks < 0 else ""
    ticks = abs(value.ticks)
    seconds, fraction = divmod(ticks, _TICKS_PER_SECOND)
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{sign}{f'{days}.' if days else ''}{hours:02d}:{minutes:02d}:{seconds:02d}"
    return text + (f".{fraction:07d}" if fraction else "")
