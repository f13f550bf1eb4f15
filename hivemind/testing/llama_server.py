"""`python -m hivemind.testing.llama_server ARGS`: llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server ARGS`) with weight repacking off, as hivemind loads every local model.

The server builds its `Llama` itself, so the setting is made process-wide before it starts
(see `hivemind.providers.llamacpp.set_weight_repacking`); without it the server segfaults at its
first decode on AMX CPUs.
"""

from __future__ import annotations


def main() -> None:
    from llama_cpp.server.__main__ import main as serve

    from hivemind.providers.llamacpp import set_weight_repacking

    set_weight_repacking(False)
    serve()


if __name__ == "__main__":
    main()
