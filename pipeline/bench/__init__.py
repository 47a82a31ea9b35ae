"""The machinery of ``voicegraph bench``: run a pipeline on the real transport and measure it.

For the bench's users (your own benchmarks, ``benchmarks/``): the probe a measured bot
carries, the loopback server, the report writers, the pieces of the capacity bench that
start and watch processes, and the caller's synthetic speech. To put a stage of your own
into a bot's graph, use :func:`pipeline.server.with_stages` and
:func:`pipeline.runtime.insert_after`; they work under any server.
"""

from pipeline.bench.capacity import (
    Children,
    cpu_list,
    meets_target,
    process_cpu_seconds,
    run_ramp,
    server_log,
    sigterm_as_exit,
    start_server,
)
from pipeline.bench.compare import compare_documents
from pipeline.bench.instrument import InstrumentedBot, ProbedFrame, StageProbe
from pipeline.bench.load_caller import speech_like
from pipeline.bench.loopback import CallerTurn, CallResult, dial, match_records, serve_on_loopback
from pipeline.bench.models import describe_models
from pipeline.bench.process_usage import tree_cpu_seconds, tree_memory_mb
from pipeline.bench.report import (
    cpu_model,
    describe_run,
    distribution,
    machine,
    progress,
    save_figure,
    table,
    write_json,
)
from pipeline.bench.subject import PipelineError, Subject, load_factory, make_subject

__all__ = [
    "CallResult",
    "CallerTurn",
    "Children",
    "InstrumentedBot",
    "PipelineError",
    "ProbedFrame",
    "StageProbe",
    "Subject",
    "compare_documents",
    "cpu_list",
    "cpu_model",
    "describe_models",
    "describe_run",
    "dial",
    "distribution",
    "load_factory",
    "machine",
    "make_subject",
    "match_records",
    "meets_target",
    "process_cpu_seconds",
    "progress",
    "run_ramp",
    "save_figure",
    "serve_on_loopback",
    "server_log",
    "sigterm_as_exit",
    "speech_like",
    "start_server",
    "table",
    "tree_cpu_seconds",
    "tree_memory_mb",
    "write_json",
]
