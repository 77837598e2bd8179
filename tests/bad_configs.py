"""A corpus of bad experiment configs: each must be refused at load with one line naming it.

Each case is ``(label, overrides, expected)``: dotted ``key=value`` overrides of the shipped
default (``@tmp`` is replaced by a temporary folder holding the files below), and a regex the
one-line error must match (it starts with the dotted key, or the file, at fault).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

Case = tuple[str, list[str], str]

CASES: list[Case] = [
    # Names every component is looked up by.
    ("unknown defense", ["defense.name=shadw"], r"^defense\.name: unknown defense 'shadw'"),
    ("unknown attack", ["attack.name=igg"], r"^attack\.name: unknown attack 'igg'"),
    ("unknown model", ["model.name=vgg"], r"^model\.name: unknown model 'vgg'"),
    ("unknown dataset", ["data.dataset=cifar"], r"^data\.dataset: unknown dataset 'cifar'"),
    ("unknown strategy", ["strategy.name=fedsgd"], r"^strategy\.name: unknown strategy"),
    # Component params, validated by the component's params dataclass.
    ("unknown defense param", ["defense.name=dp", "defense.params.sigma=1"],
     r"^defense\.params\.sigma: unknown key; expected one of: clip_norm"),
    ("unknown attack param", ["attack.params.iters=10"],
     r"^attack\.params\.iters: unknown key; expected one of: iterations"),
    ("unknown strategy param", ["strategy.name=fedprox", "strategy.params.mu=1"],
     r"^strategy\.params\.mu: unknown key; expected one of: proximal_mu"),
    ("params of none", ["defense.params.strength=1"],
     r"^defense\.params\.strength: unknown key; this takes no keys"),
    ("attack param type", ["attack.params.iterations=many"],
     r"^attack\.params\.iterations: expected an integer, got 'many'"),
    ("attack param range", ["attack.params.iterations=0"],
     r"^attack\.params\.iterations: expected an integer >= 1"),
    ("defense param range", ["defense.name=sparsification", "defense.params.prune_percent=120"],
     r"^defense\.params\.prune_percent: expected a number <= 100"),
    ("shadow alpha order", ["defense.name=shadow", "defense.params.min_cam_alpha=0.9"],
     r"^defense\.params\.min_cam_alpha: expected at most max_cam_alpha"),
    ("old per-attack image limit", ["attack.params.max_images=200"],
     r"^attack\.params\.max_images: unknown key"),
    ("strategy param range", ["strategy.name=fedadam", "strategy.params.eta=-1"],
     r"^strategy\.params\.eta: expected a number > 0"),
    ("krum keeps too many", ["strategy.name=krum", "strategy.params.num_clients_to_keep=9"],
     r"^strategy\.params\.num_clients_to_keep: expected at most strategy\.min_fit_clients"),
    # Non-finite numbers anywhere.
    ("inf lr", ["train.lr=.inf"], r"^train\.lr: expected a finite number, got inf"),
    ("nan lr", ["train.lr=.nan"], r"^train\.lr: expected a finite number, got nan"),
    ("inf dp clip", ["defense.name=dp", "defense.params.clip_norm=.inf"],
     r"^defense\.params\.clip_norm: expected a finite number"),
    ("inf outpost noise", ["defense.name=outpost", "defense.params.noise_base=.inf"],
     r"^defense\.params\.noise_base: expected a finite number"),
    ("inf shadow w0", ["defense.name=shadow", "defense.params.noise_rescale=.inf"],
     r"^defense\.params\.noise_rescale: expected a finite number"),
    ("inf attack lr", ["attack.params.lr=.inf"], r"^attack\.params\.lr: expected a finite"),
    ("inf flower dp", ["strategy.flower_dp.clipping_norm=.inf"],
     r"^strategy\.flower_dp\.clipping_norm: expected a finite number"),
    ("inf assumed lr", ["attack.assumed_training.lr=.inf"],
     r"^attack\.assumed_training\.lr: expected a number > 0, got inf"),
    # One image limit, checked against the attack's ceiling.
    ("image limit above the attack's", ["attack.max_images=200"],
     r"^attack\.max_images: expected at most 16 \(inverting_gradients"),
    ("image limit above dlg's", ["attack.name=dlg", "attack.max_images=12"],
     r"^attack\.max_images: expected at most 8 \(dlg"),
    # Threat-model needs against the threat model.
    ("labels required, withheld", ["attack.params.require_labels=true"],
     r"^attack\.labels: inverting_gradients needs the labels"),
    ("BN statistics needed, withheld", ["attack.name=gradinversion",
                                        "attack.bn_statistics=withheld"],
     r"^attack\.bn_statistics: gradinversion needs the clients' BatchNorm statistics"),
    # Rules between sections.
    ("attack round after the last", ["attack.rounds=[11]"],
     r"^attack\.rounds: expected rounds of the run \(1\.\.10, or -1\)"),
    ("attack round zero", ["attack.rounds=[0]"], r"^attack\.rounds: expected round numbers >= 1"),
    ("attack client out of range", ["attack.clients=[4]"],
     r"^attack\.clients: expected partition ids < 4"),
    ("min fit above clients", ["strategy.min_fit_clients=5"],
     r"^strategy\.min_fit_clients: expected at most partition\.num_clients \(4\)"),
    ("min available above clients", ["strategy.min_available_clients=5"],
     r"^strategy\.min_available_clients: expected at most partition\.num_clients \(4\)"),
    ("sizes of the wrong length", ["partition.sizes=[1, 2]"],
     r"^partition\.sizes: expected 4 entries"),
    ("batch sizes of the wrong length", ["partition.batch_sizes=[1, 2]"],
     r"^partition\.batch_sizes: expected 1 or 4 entries"),
    ("fedkl without BatchNorm", ["defense.name=fedkl", "model.norm=none"],
     r"^defense\.name: fedkl locks the first BatchNorm layer"),
    ("resnet18 without BatchNorm", ["model.name=resnet18", "model.norm=none"],
     r"^model\.norm: expected one of batch for resnet18"),
    # The data.
    ("sizes larger than the data", ["partition.sizes=[1, 4, 32, 100000]"],
     r"^partition\.sizes: total 100037 exceeds the train split"),
    ("more clients than images", ["partition.scheme=iid", "partition.sizes=null",
                                  "partition.num_clients=5000", "partition.batch_sizes=[8]",
                                  "attack.clients=[0]"],
     r"^partition\.num_clients: 5000 clients but the train split"),
    ("imagefolder without a path", ["data.dataset=imagefolder"],
     r"^data\.path: the imagefolder dataset needs a folder"),
    ("missing data path", ["data.dataset=imagefolder", "data.path=@tmp/nope"],
     r"^data\.path: .*nope does not exist"),
    ("a file for a folder", ["data.dataset=imagefolder", "data.path=@tmp/data.npz"],
     r"^data\.path: .*data\.npz is a file; the imagefolder dataset needs a folder"),
    ("a folder for a file", ["data.dataset=medmnist", "data.path=@tmp/folder"],
     r"^data\.path: .*folder is a folder; the medmnist dataset needs a \.npz file"),
    ("not an npz", ["data.dataset=medmnist", "data.path=@tmp/notes.txt"],
     r"^data\.path: .*notes\.txt is not a \.npz file"),
    ("a path mni152 never reads", ["data.path=@tmp/folder"],
     r"^data\.path: the mni152 dataset reads no path"),
    ("patients for a dataset without patients", ["data.patients=person(\\d+)_"],
     r"^data\.patients: the mni152 dataset does not read it; remove it \(optional data keys "
     r"it reads: data\.public_fraction\)$"),
    ("a public share medmnist never reads",
     ["data.dataset=medmnist", "data.path=@tmp/data.npz", "data.public_fraction=0.2"],
     r"^data\.public_fraction: the medmnist dataset does not read it; remove it \(optional "
     r"data keys it reads: none\)$"),
    # The machine.
    ("cuda without a GPU", ["train.device=cuda"], r"^train\.device: expected a device this"),
    ("GPU share without a GPU", ["simulation.num_gpus_per_client=0.5"],
     r"^simulation\.num_gpus_per_client: expected 0 on a machine without CUDA"),
    ("more cores than the machine", ["simulation.num_cpus_per_client=4096"],
     r"^simulation\.num_cpus_per_client: expected at most this machine's"),
    # Unbounded values.
    ("huge images", ["data.image_size=100000"], r"^data\.image_size: expected an integer <= 1024"),
    ("huge seed", ["seed=1180591620717411303424"], r"^seed: expected an integer <= 4294967295"),
    ("NUL in the name", ['name="a\\0b"'], r"^name: expected a printable name"),
    ("slash in the name", ["name=a/b"], r"^name: expected a printable name"),
    # Types and keys.
    ("unknown section", ["trian.rounds=3"], r"^trian: unknown key"),
    ("unknown key", ["train.roundz=3"], r"^train\.roundz: unknown key; expected one of: rounds"),
    ("string for a number", ["train.lr='0.1'"], r"^train\.lr: expected a number, got '0\.1'"),
    ("float for an integer", ["train.rounds=2.5"], r"^train\.rounds: expected an integer"),
    ("integer for a boolean", ["attack.adaptive=1"], r"^attack\.adaptive: expected true or false"),
    ("section as a value", ["train=3"], r"^train: expected a mapping of keys, got 3"),
]


def make_files(tmp: Path) -> None:
    """The files the cases point at (``@tmp``)."""
    (tmp / "folder").mkdir(exist_ok=True)
    np.savez(tmp / "data.npz", x=np.zeros(2))
    (tmp / "notes.txt").write_text("not data\n")


def resolve(overrides: list[str], tmp: Path) -> list[str]:
    return [o.replace("@tmp", str(tmp)) for o in overrides]


__all__ = ["CASES", "make_files", "resolve"]
