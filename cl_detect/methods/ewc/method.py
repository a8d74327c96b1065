"""`ewc`: Elastic Weight Consolidation (Kirkpatrick et al. 2017; online form of Schwarz et al. 2018).

After each task the diagonal Fisher of the detection loss is estimated on up to
`fisher_batches` batches of that task's training data and added to the Fisher
of earlier tasks (times `decay`); the weights at that moment become the anchor.
While later tasks train,

    loss_ewc = strength / 2 * sum_i F_i (theta_i - theta*_i)^2

over the parameters that train now and have a Fisher entry. Fisher and anchor
are the method's extra state (so checkpoints hold them), kept on the CPU and
copied to the parameters' device once per task.
"""
from __future__ import annotations

import torch

from cl_detect.methods.base import ContinualModel, Method, TaskContext
from cl_detect.methods.ewc._fisher import estimate_fisher
from cl_detect.methods.ewc.config import EwcConfig

State = dict[str, torch.Tensor]


class EwcMethod(Method):
    """EWC regulariser; see the module docstring."""

    # both rebuild their class parameters for every task vocabulary under the same names
    incompatible_with = ("prompt", "reparam")

    def __init__(self, config: EwcConfig):
        super().__init__(config)
        self.fisher: State = {}
        self.anchor: State = {}
        self.tasks_consolidated = 0
        self._on_device: tuple[torch.device, State, State] | None = None

    def incompatibility_reason(self) -> str:
        return ("ewc anchors each parameter by its name, but prompt (the class embeddings) and reparam (the folded "
                "class convs) rebuild their class rows for every task's vocabulary under the same names: a new "
                "vocabulary of another size fails with a shape mismatch, one of the same size pulls the new "
                "classes towards the old classes' rows; use ewc with finetune or lora")

    def check_combination(self, methods: list[Method]) -> None:
        for method in methods:
            if method.renews_trained_tensors:
                raise ValueError(f"ewc cannot be combined with {method.renews_trained_tensors}: ewc anchors the "
                                 f"trained tensors by name, so the penalty would pull each fresh tensor's "
                                 f"initialisation towards the previous task's values (or, with {method.name} "
                                 f"listed first, nothing trains when the Fisher is estimated); change that "
                                 f"setting or drop ewc")
            if method.trains_new_tensors_each_task:
                raise ValueError(f"ewc cannot be combined with {method.trains_new_tensors_each_task}: ewc "
                                 f"penalises only tensors that were trained and consolidated before, and none of "
                                 f"them trains again, so the penalty would always be 0; change that setting or "
                                 f"drop ewc")

    def after_task(self, model: ContinualModel, task: TaskContext) -> None:
        if task.train_dataset is None:
            raise ValueError(f"ewc needs the task's training data to estimate the Fisher; task {task.name!r} "
                             f"has no train_dataset")
        config = self.config
        image_size = config.image_size or task.image_size
        if image_size is None:
            raise ValueError(f"ewc: set its image_size, or pass the training size as TaskContext.image_size "
                             f"(task {task.name!r})")
        task_fisher = estimate_fisher(model, task.train_dataset, config.fisher_batches, config.batch_size,
                                      image_size, config.seed + task.index)
        self.consolidate(model, task_fisher)

    def consolidate(self, model: ContinualModel, task_fisher: State) -> None:
        """Add a task's Fisher to the running one and anchor at the current weights.

        Args:
            model: the model whose current weights become the anchor.
            task_fisher: parameter name -> Fisher diagonal of the finished task.
        """
        for name in self.fisher.keys() - task_fisher.keys():
            self.fisher[name] = self.config.decay * self.fisher[name]
        for name, value in task_fisher.items():
            old = self.fisher.get(name)
            self.fisher[name] = value.float().cpu() if old is None else self.config.decay * old + value.float().cpu()
        parameters = dict(model.named_parameters())
        self.anchor = {name: parameters[name].detach().float().cpu().clone() for name in self.fisher}
        self.tasks_consolidated += 1
        self._on_device = None

    def _device_state(self, device: torch.device) -> tuple[State, State]:
        if self._on_device is None or self._on_device[0] != device:
            self._on_device = (device, {n: f.to(device) for n, f in self.fisher.items()},
                               {n: a.to(device) for n, a in self.anchor.items()})
        return self._on_device[1], self._on_device[2]

    def penalty(self, model: ContinualModel) -> torch.Tensor:
        """strength / 2 * sum F (theta - theta*)^2 over trainable parameters with a Fisher entry."""
        device = next(model.detector.parameters()).device
        total = torch.zeros((), device=device)
        if not self.fisher:
            return total
        fisher, anchor = self._device_state(device)
        for name, param in model.named_parameters():
            if param.requires_grad and name in fisher:
                total = total + (fisher[name] * (param.float() - anchor[name]).pow(2)).sum()
        return 0.5 * self.config.strength * total

    def extra_losses(self, model: ContinualModel, batch: dict, output, text: torch.Tensor) -> dict:
        return {"loss_ewc": self.penalty(model)}

    def get_extra_state(self) -> dict:
        return {"fisher": self.fisher, "anchor": self.anchor, "tasks_consolidated": self.tasks_consolidated}

    def set_extra_state(self, state: dict) -> None:
        self.fisher = {n: t.float().cpu() for n, t in state["fisher"].items()}
        self.anchor = {n: t.float().cpu() for n, t in state["anchor"].items()}
        self.tasks_consolidated = int(state["tasks_consolidated"])
        self._on_device = None
