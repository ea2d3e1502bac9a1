"""The rows of the paper's ablation tables as config overrides (Table 5: modules, Table 6: depths).

Every row is a list of ``key=value`` overrides for ``lofr.engine.config.load_config`` on top of a
training config (``synth-cpu`` in ``benchmarks/table5_modules.py`` / ``table6_depths.py`` and in
notebook 06); the scripts and the notebook train and evaluate them, this module only says what each
row switches.

Table 5 (what each LOFR module adds to the DETR-style baseline):

    baseline       model=baseline: CNN + DETR encoder/decoder on the stride-4 map, final BCE only
    +SPE, +MS, ... model=lofr with the baseline's settings (``BASE``) and only the named modules on
    all            every module on: the paper's LOFR (decoder values = the encoder's memory)
    lofr-config    model=lofr with the config untouched (synth-cpu: ``arch.dec_value=local``, not the
                   paper's) = synth_claim.py's "LOFR" row; not in the paper, it shows what that change does

``BASE`` (``arch.cam_head=false arch.enc_head=false``, every module off, ``arch.dec_value=memory``)
builds exactly the Baseline's network and loss as ``model=lofr``. What a module switches on
(``MODULES``):

    SPE    arch.use_spe (Eq. 3-4) + the CAM head it reads (arch.cam_head, trained with L_cls_cnn,
           Eq. 13's α)
    MS     arch.multi_scale (strides 4 / 8 / 16, Eq. 5-9) + the encoder's classifier (arch.enc_head,
           L_cls_en, α1): the MSC-En's own output branch
    RePPG  arch.use_reppg (Eq. 10) + the CAM head whose prototypes F_c it reads (Eq. 2; + L_cls_cnn)
    PDC    arch.use_pdc: β L_div (Eq. 11) on the decoder's part features. It needs no other module,
           so "+PDC alone" is the baseline's network trained with the final BCE + β L_div.

Table 6 (encoder / decoder depths D_En, D_De): ``model=lofr`` with the config untouched but
``arch.enc_layers`` / ``arch.dec_layers``; ``CPU_GRID`` is the 2-core grid, ``FULL_GRID`` the
paper's (GPU) one. synth-cpu's own depths are D_En 1, D_De 2; the paper's COCO choice is 4 / 6.
"""

from __future__ import annotations

__all__ = ["BASE", "MODULES", "with_modules", "TABLE5_ROWS", "CPU_GRID", "FULL_GRID", "grid_rows"]

# model=lofr configured as the paper's baseline (the same network and loss weights as model=baseline)
BASE = ["model=lofr", "arch.cam_head=false", "arch.enc_head=false", "arch.use_spe=false", "arch.multi_scale=false",
        "arch.use_reppg=false", "arch.use_pdc=false", "arch.dec_value=memory", "arch.dec_key_bias=false"]
# module -> the overrides that switch it on (with the heads / losses it needs)
MODULES = {"SPE": ["arch.cam_head=true", "arch.use_spe=true"],
           "MS": ["arch.multi_scale=true", "arch.enc_head=true"],
           "RePPG": ["arch.cam_head=true", "arch.use_reppg=true"],
           "PDC": ["arch.use_pdc=true"]}


def with_modules(*names: str) -> list[str]:
    """The overrides of the baseline-like LOFR (``BASE``) with the modules ``names`` switched on
    (later keys win)."""
    return BASE + [o for n in names for o in MODULES[n]]


TABLE5_ROWS = {  # key -> (label, overrides); the table's order
    "baseline": ("Baseline", ["model=baseline"]),
    "+SPE": ("+SPE", with_modules("SPE")),
    "+MS": ("+MS", with_modules("MS")),
    "+RePPG": ("+RePPG", with_modules("RePPG")),
    "+PDC": ("+PDC", with_modules("PDC")),
    "+SPE+MS": ("+SPE +MS", with_modules("SPE", "MS")),
    "+RePPG+PDC": ("+RePPG +PDC", with_modules("RePPG", "PDC")),
    "all": ("all (LOFR, paper)", with_modules("SPE", "MS", "RePPG", "PDC")),
    "lofr-config": ("LOFR as configured", ["model=lofr"]),
}

CPU_GRID = ((1, 2), (1, 2, 3))  # (D_En values, D_De values): 6 rows on 2 cores
FULL_GRID = ((2, 3, 4, 6), (2, 3, 4, 6))  # the GPU grid: 16 rows


def grid_rows(enc, dec) -> dict:
    """Table 6: {"en<a>-de<b>": (label, overrides)} for every (D_En, D_De) pair."""
    return {f"en{a}-de{b}": (f"D_En {a}, D_De {b}", ["model=lofr", f"arch.enc_layers={a}", f"arch.dec_layers={b}"])
            for a in enc for b in dec}
