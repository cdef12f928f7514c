"""Count the words of every text file in a folder: one Azure Batch task per file, `wc -w` on the node.

Usage: python count_words.py TEXTS COUNTS

The Batch and Storage accounts come from the AZURE_* variables (`aiobatch local` sets them for the emulator
and Azurite). Exit status: 0 when every file has its count, 1 when some failed.
"""

import asyncio
import sys

import aiobatch

# Check that the file is UTF-8 text (iconv says where it is not), then count its words into {output}.
COMMAND = "iconv -f utf-8 -t utf-8 {input} > /dev/null && wc -w < {input} > {output}"
# wc counts words of any script only in a UTF-8 locale; a node's default locale is C.
ENVIRONMENT = {"LC_ALL": "C.UTF-8"}


async def main(texts: str, counts: str) -> int:
    pool = aiobatch.PoolSpec.ubuntu_24_04("count-words", "standard_d2s_v3", dedicated_nodes=2)
    async with aiobatch.Client.from_env(cleanup=True) as client:
        run = client.map_files(
            texts, COMMAND, "{stem}.count", glob="*.txt", pool=pool, output_dir=counts, environment=ENVIRONMENT
        )
        async for result in run:
            if result.status == "succeeded":
                words = int(result.outputs[0].read_text())
                print(f"{result.name}: {words} words")
            elif result.status == "failed":
                print(f"{result.name}: failed ({result.error})")
                print(f"    {result.stderr_tail}")
        print(run.report)
    return 0 if run.report.ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
