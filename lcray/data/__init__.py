"""Data: QA records and their IO, synthetic long-context QA, chunking, LOGO position-id
synthesis, SoLoPO short/long contexts, and the shared preference schema.

lcray.data.qa_prompts (trainer prompts and pairs) is not re-exported here: it imports
lcray.engines (torch), and `import lcray.data` stays light."""

from lcray.data.chunking import chunk_text, chunk_tokens
from lcray.data.contexts import ContextPair, build_contexts, format_documents, render_prompt
from lcray.data.positions import MODES, mixed_mode, slice_bounds, synthesize_position_ids
from lcray.data.records import (
    DataError,
    QARecord,
    ReadResult,
    read_records,
    record_from_dict,
    stable_seed,
    write_records,
)
from lcray.data.schema import PREFERENCE_SCHEMA, PreferenceExample, examples_to_table, table_to_examples
from lcray.data.synthetic import ENTITY_POOLS, make_synthetic_records, name_pool

__all__ = [
    "ContextPair",
    "DataError",
    "ENTITY_POOLS",
    "MODES",
    "PREFERENCE_SCHEMA",
    "PreferenceExample",
    "QARecord",
    "ReadResult",
    "build_contexts",
    "chunk_text",
    "chunk_tokens",
    "examples_to_table",
    "format_documents",
    "make_synthetic_records",
    "mixed_mode",
    "name_pool",
    "read_records",
    "record_from_dict",
    "render_prompt",
    "slice_bounds",
    "stable_seed",
    "synthesize_position_ids",
    "table_to_examples",
    "write_records",
]
