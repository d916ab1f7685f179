"""MedAug (Vu et al. 2021): MoCo whose positive is another image of the same patient, chosen by study and laterality."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import pandas as pd

from cxrbench.data.partners import Partners, find_partners
from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain.moco import PRESETS
from cxrbench.pretrain.moco import Method as MoCo

#: prepared datasets whose adapters record real patient ids with several images per patient
DATASETS_WITH_PATIENTS = ("brax", "chexpert", "mimic-cxr", "nih", "padchest", "synthetic")


class Method(MoCo):
    """MedAug around an encoder: the query is a view of an image, the key a view of a partner image
    of the same patient drawn anew at every step among those meeting the criteria:

    ``study``: ``same`` (the image's own study), ``distinct`` (another study) or ``all``;
    ``laterality``: ``same`` (frontal with frontal, lateral with lateral), ``distinct`` or ``all``.
    The default, same study with any laterality, is the paper's best strategy; laterality needs the
    lateral views kept (``cxrbench prepare --views all``). An image with no eligible partner is paired
    with itself (two augmented views, plain MoCo), as the paper does. The rest is MoCo (queue,
    momentum encoder, head) with the MoCo-CXR views and settings the paper builds on by default.
    """

    defaults: ClassVar[dict[str, Any]] = {**MoCo.defaults, **PRESETS["moco-cxr"]["training"]}
    default_preset: ClassVar[str] = "moco-cxr"

    def __init__(
        self,
        encoder: Encoder,
        *,
        study: Literal["same", "distinct", "all"] = "same",
        laterality: Literal["same", "distinct", "all"] = "all",
        preset: Literal["moco-v2", "moco-cxr"] = "moco-cxr",
        temperature: float | None = None,
        momentum: float | None = None,
        queue_size: int | None = None,
        projection_dim: int = 128,
    ) -> None:
        super().__init__(
            encoder,
            preset=preset,
            temperature=temperature,
            momentum=momentum,
            queue_size=queue_size,
            projection_dim=projection_dim,
        )
        self.study, self.laterality = study, laterality

    @classmethod
    def partner_candidates(cls, rows: pd.DataFrame, options: Mapping[str, Any], *, dataset: str) -> Partners:
        """The same-patient images meeting the study and laterality criteria, per train row; a
        one-line error where the dataset has no patient ids or lacks the metadata a criterion needs."""
        study, side = options.get("study", "same"), options.get("laterality", "all")
        patients = rows["patient_id"]
        if patients.isna().all() or not patients.duplicated().any():
            raise CxrbenchError(
                f"medaug pairs images of the same patient, but dataset '{dataset}' has one train image per "
                f"patient id (no patient ids); use a dataset that records them: {', '.join(DATASETS_WITH_PATIENTS)}"
            )
        for criterion, value, column, fix in (
            ("study", study, "study_id", "--option study=all"),
            ("laterality", side, "view", "--option laterality=all"),
        ):
            if value != "all" and (column not in rows or rows[column].isna().all()):
                raise CxrbenchError(
                    f"medaug --option {criterion}={value}: dataset '{dataset}' records no {column}; use {fix}"
                )
        return find_partners(
            patients.to_numpy(),
            rows["study_id"].to_numpy() if "study_id" in rows else None,
            rows["view"].to_numpy() if "view" in rows else None,
            study=study,
            side=side,
        )

    def loss(self, batch: Batch, step: Step) -> Loss:
        return self.contrast(batch["images"], batch["partner_images"], step)
