"""Data-parallel training on torch.distributed: who this process is, and the few collectives we need.

A launcher (torchrun, SLURM's srun, mpirun) starts one process per device; each reads its
rank from the environment that launcher sets (:func:`process_from_environment`), joins the
process group (NCCL on CUDA, gloo on CPU), trains on its own shard of the data, and lets
DistributedDataParallel average the gradients. Nothing here is our own communication
layer: the helpers below only wrap torch.distributed calls so that the single-process path
(no group) runs the same code.
"""
import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, List, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Subset

from mace.core.errors import UserInputError

LAUNCHERS = ("slurm", "torchrun", "mpi", "none")
# Port of the rendezvous when the launcher does not say (SLURM and MPI set none).
DEFAULT_MASTER_PORT = "33333"


@dataclass(frozen=True)
class ProcessPlace:
    """This process's place in the job: global rank, number of processes, rank on its node."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = ProcessPlace(rank=0, world_size=1, local_rank=0, master_addr="localhost", master_port=DEFAULT_MASTER_PORT)


def _required(environ: Mapping[str, str], names: List[str], launcher: str) -> List[str]:
    missing = [name for name in names if name not in environ]
    if missing:
        raise UserInputError(
            f"--distributed --launcher {launcher}: the environment lacks {', '.join(missing)}; "
            f"start the run with the {launcher} launcher (see README, 'Training on several GPUs')"
        )
    return [environ[name] for name in names]


def slurm_master_address(nodelist: str) -> str:
    """The first host of SLURM's compressed node list (``node[01-04]`` -> ``node01``)."""
    import hostlist

    hosts = hostlist.expand_hostlist(nodelist)
    if not hosts:
        raise UserInputError(f"SLURM_JOB_NODELIST '{nodelist}' names no host")
    return hosts[0]


def process_from_environment(launcher: str, environ: Optional[Mapping[str, str]] = None) -> ProcessPlace:
    """Rank, world size and rendezvous address as the launcher put them in the environment."""
    environ = os.environ if environ is None else environ
    port = environ.get("MASTER_PORT", DEFAULT_MASTER_PORT)
    if launcher == "torchrun":
        rank, world, local = _required(environ, ["RANK", "WORLD_SIZE", "LOCAL_RANK"], launcher)
        address = environ.get("MASTER_ADDR", "localhost")
    elif launcher == "slurm":
        rank, world, local, nodes = _required(
            environ, ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST"], launcher
        )
        address = slurm_master_address(nodes)
    elif launcher == "mpi":
        rank, world, local = _required(
            environ, ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"], launcher
        )
        address = environ.get("MASTER_ADDR", "localhost")
    elif launcher == "none":
        return SINGLE_PROCESS
    else:
        raise UserInputError(f"--launcher {launcher}: choose one of {', '.join(LAUNCHERS)}")
    return ProcessPlace(int(rank), int(world), int(local), address, port)


def start_process_group(place: ProcessPlace, device_type: str) -> None:
    """Join the job's process group: NCCL between GPUs, gloo between CPU processes."""
    os.environ["MASTER_ADDR"] = place.master_addr
    os.environ["MASTER_PORT"] = place.master_port
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(place.local_rank)
    dist.init_process_group(
        backend=backend, rank=place.rank, world_size=place.world_size, timeout=timedelta(minutes=30)
    )


def end_process_group() -> None:
    if is_distributed():
        dist.destroy_process_group()


@contextlib.contextmanager
def joined_process_group(place: ProcessPlace, device_type: str) -> Iterator[None]:
    """Hold the process group for the body; after a normal end, leave it together.

    A process that tears its group down while a peer still holds connections to it (rank 0
    hosts the rendezvous store) can abort in gloo's threads after finished work, hence the
    barrier; after an error the peers may never reach it, so then the group is only torn down.
    """
    start_process_group(place, device_type)
    try:
        yield
        barrier()
    finally:
        end_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True in a single-process run and on rank 0: the one process that writes files and logs."""
    return not is_distributed() or dist.get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_objects(value: Any) -> List[Any]:
    """Every process's ``value``, in rank order (a one-element list without a group)."""
    if not is_distributed():
        return [value]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def shard(items: Sequence[Any]) -> Sequence[Any]:
    """This process's share of ``items`` (every world_size-th from its rank): disjoint
    shares whose union is ``items``, so evaluations gathered over ranks equal one process's.
    A view, not a copy: graphs built on access (HDF5 data) stay unbuilt until a batch asks."""
    if not is_distributed():
        return items
    return Subset(items, range(dist.get_rank(), len(items), dist.get_world_size()))
