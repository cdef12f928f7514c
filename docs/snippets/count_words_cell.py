# A notebook cell: Jupyter runs top-level `await` and `async with` on the kernel's own event loop.
import aiobatch

pool = aiobatch.PoolSpec.ubuntu_24_04("count-words", dedicated_nodes=2)
async with aiobatch.Client.from_env(cleanup=True) as client:
    report = await client.map_files(
        "texts",
        "wc -w < {input} > {output}",
        "{stem}.count",
        glob="*.txt",
        pool=pool,
        output_dir="counts",
        environment={"LC_ALL": "C.UTF-8"},
    )
print(report)
words = {r.name: int(r.outputs[0].read_text()) for r in report.results if r.ok}
