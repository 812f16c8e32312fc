"""OneTrainer UI additions (the Base/Ctk/PySide6 view layout of July 2026 and later).

* Optimizer window (modules/ui/BaseOptimizerParamsWindowView.py ``build_dynamic_content``, whose
  ``KEY_DETAIL_MAP`` is a local): for LOLI_CLUSTERED the original lays out the *inner* optimizer's own
  rows with OneTrainer's own labels, and the plugin fills the three slots its keys occupy with
  "Inner Optimizer", "Timestep Clusters" and "Cluster Schedule". Changing the inner optimizer rebuilds
  the rows.
* Training tab (modules/ui/BaseTrainingTabView.py ``__create_loss_frame``, private): a "Cosine
  Strength" entry on the first free row of the loss section, beside MSE and MAE strength.

Both views are shared by the customtkinter and the PySide6 UI (``self.components`` is the toolkit's
component module), so one patch covers both. On a layout without these targets the UI shows no plugin
rows (logged once); configs and the CLI still carry the plugin's options.
"""

from __future__ import annotations

from .base import FunctionPatch, Instrumentor, bind_arguments
from .onetrainer import FIELD_DETAILS, LIBRARY, MEMBER, OPTIMIZER_FIELDS, PLUGIN_INNERS, SUPPORTED, rows_of

SCHEDULES = ["shuffle", "random", "round_robin"]
COSINE_ROW = 9  # rows 0-8 of the loss frame are OneTrainer's (MSE ... Loss Scaler) for every model type


def build_dynamic_content(context, wrapped, instance, args, kwargs):
    bound = bind_arguments(wrapped, args, kwargs)
    instance = bound.get("self", instance)
    controller = bound["controller"]
    if str(controller.config.optimizer.optimizer) != MEMBER:
        return wrapped(*args, **kwargs)
    from modules.util.enum.Optimizer import Optimizer
    from modules.util.optimizer_util import OPTIMIZER_DEFAULT_PARAMETERS as table

    member = Optimizer[MEMBER]
    inner_name = rows_of(str(getattr(controller.config.optimizer, "loli_inner", "ADAMW")))
    inner = Optimizer[inner_name] if inner_name in Optimizer.__members__ and inner_name != MEMBER else Optimizer.ADAMW
    own = [name for name, *_ in OPTIMIZER_FIELDS]
    saved = table[member]
    # the plugin's keys first (skipped by the original: not in its KEY_DETAIL_MAP), then the inner's keys
    table[member] = {**{k: saved[k] for k in own}, **{k: v for k, v in table[inner].items() if k not in own}}
    try:
        result = wrapped(*args, **kwargs)
    finally:
        table[member] = saved
    components, master, ui_state = instance.components, bound["master"], bound["optimizer_ui_state"]
    update = bound["update_user_pref_cb"]

    def inner_changed(value=None, *_):
        # like OneTrainer's own optimizer switch (optimizer_util.change_optimizer): the new inner's rows start
        # from its OPTIMIZER_DEFAULT_PARAMETERS, not from the previous inner's values (or blanks)
        name = str(value if value is not None else controller.config.optimizer.loli_inner)
        if rows_of(name) in Optimizer.__members__ and name != MEMBER:
            from modules.util.config.TrainConfig import TrainOptimizerConfig

            fresh = TrainOptimizerConfig.default_values()
            fresh.from_dict(table[Optimizer[rows_of(name)]])
            fresh.optimizer = member
            for key in own:
                setattr(fresh, key, getattr(controller.config.optimizer, key))
            fresh.loli_inner = name
            ui_state.update(fresh)
        if update is not None:
            update()
        rebuild = getattr(instance, "_rebuild_dynamic_ui", None)
        if rebuild is not None:
            rebuild()

    for index, key in enumerate(own):  # the slots the original left empty, same layout formula
        row, col = index // 2 + 1, 3 * (index % 2)
        title, tooltip, kind = FIELD_DETAILS[key]
        components.label(master, row, col, title, tooltip=tooltip)
        if kind == "options":
            values = [str(m) for m in Optimizer if m is not member and not m.is_schedule_free] + list(PLUGIN_INNERS)
            components.options(master, row, col + 1, values, ui_state, key, command=inner_changed)
        elif kind == "schedule":
            components.options(master, row, col + 1, SCHEDULES, ui_state, key, command=lambda *_: update and update())
        else:
            components.entry(master, row, col + 1, ui_state, key, command=update)
    return result


def create_loss_frame(context, wrapped, instance, args, kwargs):
    bound = bind_arguments(wrapped, args, kwargs)
    instance = bound.get("self", instance)
    components = instance.components
    frames = []
    original_section_frame = components.section_frame

    def section_frame(*a, **kw):  # the loss frame is a local of the original: catch it as it is made
        frame = original_section_frame(*a, **kw)
        frames.append(frame)
        return frame

    components.section_frame = section_frame
    try:
        result = wrapped(*args, **kwargs)
    finally:
        components.section_frame = original_section_frame
    if frames:
        frame = frames[0]
        components.label(frame, COSINE_ROW, 0, "Cosine Strength",
                         tooltip="Strength of the cosine loss (1 - cosine similarity of prediction and target along the "
                                 "channels; loli-plugin). Loli loss: MSE 0.4, MAE 0.4, Cosine 0.2")
        components.entry(frame, COSINE_ROW, 1, bound["ui_state"], "cos_strength")
    return result


UI = Instrumentor(LIBRARY, SUPPORTED, [
    FunctionPatch("modules.ui.BaseOptimizerParamsWindowView", "BaseOptimizerParamsWindowView.build_dynamic_content",
                  "LOLI_CLUSTERED rows in the optimizer window", "ui",
                  params=["self", "master", "controller", "optimizer_ui_state", "update_user_pref_cb"],
                  wrapper=build_dynamic_content),
    FunctionPatch("modules.ui.BaseTrainingTabView", "BaseTrainingTabView._BaseTrainingTabView__create_loss_frame",
                  "Cosine Strength in the loss section", "ui",
                  params=["self", "master", "row", "controller", "ui_state"], reads=["self", "ui_state"], wrapper=create_loss_frame),
])
