"""Issue 16, item 2: VM sizes and images are checked against a catalogue (data in ``catalogue.json``).

A size or image Azure Batch does not offer was accepted and gave a ready pool (``standard_d2s_v33``,
``ubuntu-24_04-ltss``, ``Standard D2s v3!!``); ``GET /supportedimages`` answered 404. Contract tests drive the
unmodified ``azure.batch.aio.BatchClient``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError

from aiobatch._specs import IMAGES
from aiobatch.emulator import Emulator
from aiobatch.emulator._catalogue import catalogue
from aiobatch.emulator._model import vm_cores

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def vm_config(
    offer: str = "0001-com-ubuntu-server-jammy", sku: str = "22_04-lts", agent: str = "batch.node.ubuntu 22.04"
) -> m.VirtualMachineConfiguration:
    return m.VirtualMachineConfiguration(
        image_reference=m.BatchVmImageReference(publisher="Canonical", offer=offer, sku=sku), node_agent_sku_id=agent
    )


@pytest.fixture
async def batch(batch_emulator: Emulator) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as client:
        yield client


async def refused_property(call: Any) -> str:
    """The property a 400 InvalidPropertyValue names."""
    with pytest.raises(HttpResponseError) as caught:
        await call
    error = caught.value
    assert error.status_code == 400 and error.error is not None and error.error.code == "InvalidPropertyValue", error
    assert error.response is not None
    return {v["key"]: v["value"] for v in error.response.json()["values"]}["PropertyName"]


@pytest.mark.parametrize("size", ["standard_d2s_v33", "Standard D2s v3!!", "large"])
async def test_a_vm_size_azure_does_not_offer_is_the_services_400(batch: BatchClient, size: str) -> None:
    pool = m.BatchPoolCreateOptions(id="p", vm_size=size, virtual_machine_configuration=vm_config())
    assert await refused_property(batch.create_pool(pool)) == "vmSize"
    assert [p async for p in batch.list_pools()] == []


async def test_an_image_azure_batch_does_not_support_or_the_wrong_node_agent_is_the_services_400(
    batch: BatchClient,
) -> None:
    bad_image = m.BatchPoolCreateOptions(
        id="p",
        vm_size="standard_d2s_v3",
        virtual_machine_configuration=vm_config("ubuntu-24_04-ltss", "server", "batch.node.ubuntu 24.04"),
    )
    assert await refused_property(batch.create_pool(bad_image)) == "virtualMachineConfiguration.imageReference"
    wrong_agent = m.BatchPoolCreateOptions(
        id="p",
        vm_size="standard_d2s_v3",
        virtual_machine_configuration=vm_config("ubuntu-24_04-lts", "server", "batch.node.ubuntu 22.04"),
    )
    assert await refused_property(batch.create_pool(wrong_agent)) == "virtualMachineConfiguration.nodeAgentSKUId"
    # The same checks for an auto pool and for a PATCH of an empty pool's size.
    auto = m.BatchJobCreateOptions(
        id="j",
        pool_info=m.BatchPoolInfo(
            auto_pool_specification=m.BatchAutoPoolSpecification(
                pool_lifetime_option="job",
                pool=m.BatchPoolSpecification(vm_size="standard_d2s_v33", virtual_machine_configuration=vm_config()),
            )
        ),
    )
    assert (await refused_property(batch.create_job(auto))).endswith("vmSize")
    await batch.create_pool(
        m.BatchPoolCreateOptions(id="p", vm_size="Standard_D2s_v3", virtual_machine_configuration=vm_config())
    )
    assert await refused_property(batch.update_pool("p", m.BatchPoolUpdateOptions(vm_size="standard_d2s_v33"))) == (
        "vmSize"
    )
    assert (await batch.get_pool("p")).vm_size == "standard_d2s_v3"


async def test_supported_images_are_listed_and_filtered_from_the_catalogue(batch: BatchClient) -> None:
    """The operation answered 404 ResourceNotFound."""
    images = [i async for i in batch.list_supported_images()]
    assert len(images) == len(catalogue().images)
    jammy = next(i for i in images if i.image_reference.sku == "22_04-lts")
    assert (jammy.node_agent_sku_id, jammy.os_type, jammy.verification_type) == (
        "batch.node.ubuntu 22.04",
        "linux",
        "verified",
    )
    linux = [i async for i in batch.list_supported_images(filter="osType eq 'linux'")]
    assert linux and all(i.os_type == "linux" for i in linux) and len(linux) < len(images)
    agent = [i async for i in batch.list_supported_images(filter="nodeAgentSKUId eq 'batch.node.ubuntu 24.04'")]
    # Canonical's 24.04 image, and the DSVM HPC image Azure Batch names as the 22.04 HPC successor (Azure/Batch#200).
    assert {i.image_reference.offer for i in agent} == {"ubuntu-24_04-lts", "ubuntu-hpc"}


async def test_any_size_and_image_with_strict_catalogue_off(tmp_path: Path) -> None:
    custom = m.VirtualMachineConfiguration(
        image_reference=m.BatchVmImageReference(publisher="me", offer="my-image", sku="1"),
        node_agent_sku_id="batch.node.ubuntu 22.04",
    )
    async with (
        Emulator(workdir=tmp_path, strict_catalogue=False) as emulator,
        BatchClient(emulator.endpoint, emulator.credential) as batch,
    ):
        await batch.create_pool(
            m.BatchPoolCreateOptions(id="p", vm_size="Custom_X7", virtual_machine_configuration=custom)
        )
        assert (await batch.get_pool("p")).vm_size == "custom_x7"


def test_cores_come_from_the_catalogue() -> None:
    """The name says 11 for Standard_D11_v2; Azure lists 2 vCPUs (the core quota counts those)."""
    assert vm_cores("Standard_D11_v2") == 2
    assert vm_cores("standard_d2s_v3") == 2
    assert vm_cores("Standard_NC24ads_A100_v4") == 24
    # NCv3 retired on 2025-09-30 (Microsoft Learn, "Retired Azure VM size series"): no longer in the catalogue.
    assert "standard_nc6s_v3" not in catalogue().sizes
    assert vm_cores("Custom_X7") == 7  # not in the catalogue: read from the name


def test_every_vm_size_and_image_the_project_uses_is_in_the_catalogue() -> None:
    """Tests, benchmarks, examples and the library's presets use real sizes and images only."""
    sizes = catalogue().sizes
    images = {tuple(i["imageReference"][k].lower() for k in ("publisher", "offer", "sku")) for i in catalogue().images}
    used: set[str] = set()
    for folder in ("src", "tests", "bench", "examples", "docs"):
        for path in (ROOT / folder).rglob("*"):
            # This file names fake sizes on purpose.
            if path.suffix in (".py", ".md", ".ipynb") and path.is_file() and path.name != Path(__file__).name:
                used |= {
                    s.lower() for s in re.findall(r"\bstandard_[a-z0-9_]+", path.read_text(errors="replace"), re.I)
                }
    used -= {"standard_lrs", "standard_grs", "standard_ragrs", "standard_zrs"}  # storage SKUs, not VM sizes
    assert used and used <= set(sizes), sorted(used - set(sizes))
    agents = {
        tuple(i["imageReference"][k].lower() for k in ("publisher", "offer", "sku")): i["nodeAgentSKUId"]
        for i in catalogue().images
    }
    for preset in IMAGES.values():
        key = (preset.publisher.lower(), preset.offer.lower(), preset.sku.lower())
        assert key in images and agents[key] == preset.node_agent_sku_id, preset
