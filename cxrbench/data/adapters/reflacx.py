"""REFLACX adapter: radiologists' abnormality labels with certainty levels on MIMIC-CXR frontal images.

REFLACX (Bigolin Lanfredi et al., Scientific Data 2022; PhysioNet ``reflacx-xray-localization``
1.0.0) holds dictated reports, eye tracking and labels from five radiologists reading 2,616 frontal
MIMIC-CXR images (3,032 readings). Each reading marks each abnormality with a certainty level:
0 not selected, 1 unlikely, 2 less likely, 3 possibly, 4 suggestive of, 5 highly likely.

Files read: ``main_data/metadata_phase_1.csv`` … ``_3.csv`` under ``root`` (or directly in
``root``); at least one must exist. Columns: ``id`` (reading), ``split`` (``train``/``validate``/
``test`` → ``train``/``val``/``test``, the creators' split), ``eye_tracking_data_discarded``,
``image`` (the MIMIC-CXR DICOM path ``.../files/pXX/pSUBJECT/sSTUDY/DICOM.dcm``), ``dicom_id``,
``subject_id``, ``image_size_x``, ``image_size_y``, then one certainty column per abnormality (the
label names differ between phase 1 and phases 2–3; a label a phase lacks is unknown there).
Certainty → label: 4–5 positive, 2–3 uncertain (-1.0), 0–1 negative; blank unknown. Readings of one
image are combined by majority (more than half positive → 1.0, more than half negative → 0.0,
otherwise -1.0). Readings whose eye tracking was discarded keep their labels. ``labels="ssl13"``
(default) keeps the nine labels of the 13-dataset benchmark; ``"all"`` keeps every column. Images
follow the MIMIC-CXR-JPG layout under ``mimic_root`` (default ``root``); views come from its
``mimic-cxr-2.0.0-metadata.csv(.gz)`` when present, else None (the set is frontal-only by design).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.adapters import mimic_cxr
from cxrbench.data.adapters.base import RawDataset, normalise_view, require_file
from cxrbench.errors import CxrbenchError

PHASES = tuple(f"metadata_phase_{i}.csv" for i in (1, 2, 3))
META_COLUMNS = (
    "id",
    "split",
    "eye_tracking_data_discarded",
    "image",
    "dicom_id",
    "subject_id",
    "image_size_x",
    "image_size_y",
)
SSL13_LABELS = (
    "Atelectasis",
    "Consolidation",
    "Enlarged cardiac silhouette",
    "Groundglass opacity",
    "High lung volume / emphysema",
    "Lung nodule or mass",
    "Pleural abnormality",
    "Pneumothorax",
    "Pulmonary edema",
)
LABEL_SETS = ("ssl13", "all")
_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}
_IMAGE_RE = r"p\d{2}/p(?P<subject>\d+)/s(?P<study>\d+)/(?P<dicom>[^/]+?)\.(?:dcm|jpg)$"


def certainty_to_label(certainty: pd.DataFrame) -> pd.DataFrame:
    """Return 1.0 for certainty 4–5, -1.0 for 2–3, 0.0 for 0–1 and NaN for blank."""
    c = certainty.to_numpy(dtype=float)
    out = np.select([c >= 4, c >= 2, c >= 0], [1.0, -1.0, 0.0], default=np.nan)
    return pd.DataFrame(out, index=certainty.index, columns=certainty.columns)


def _read_phases(root: Path) -> list[tuple[Path, pd.DataFrame]]:
    folder = root / "main_data" if (root / "main_data").is_dir() else root
    found = [folder / n for n in PHASES if (folder / n).exists()]
    if not found:
        require_file(root, *(f"main_data/{n}" for n in PHASES))
    tables = []
    for path in found:
        df = pd.read_csv(path, dtype={"id": str, "dicom_id": str, "subject_id": str, "image": str})
        df.columns = [c.strip() for c in df.columns]
        missing = [c for c in ("id", "split", "image", "dicom_id", "subject_id") if c not in df]
        if missing:
            raise CxrbenchError(f"{path} lacks columns {missing}: not a REFLACX metadata file")
        tables.append((path, df))
    return tables


def load(root: Path, *, labels: str = "ssl13", mimic_root: Path | None = None) -> RawDataset:
    """Return REFLACX as one row per image, readings combined by majority over certainty labels."""
    if labels not in LABEL_SETS:
        raise CxrbenchError(f"labels must be one of {', '.join(LABEL_SETS)}, got '{labels}'")
    root = Path(root)
    mimic_root = Path(mimic_root) if mimic_root is not None else root
    readings = []
    for path, df in _read_phases(root):
        label_cols = [c for c in df.columns if c not in META_COLUMNS]
        certainty = df[label_cols].apply(pd.to_numeric, errors="coerce")
        bad = (certainty.notna() & ~certainty.isin(range(6))) | (certainty.isna() & df[label_cols].notna())
        if bad.any().any():
            col = bad.any()[lambda s: s].index[0]
            value = df.loc[bad[col], col].iloc[0]
            raise CxrbenchError(f"{path}: column '{col}' has certainty '{value}'; expected 0 to 5")
        parts = df["image"].str.strip().str.extract(_IMAGE_RE)
        if parts["study"].isna().any():
            bad_image = df.loc[parts["study"].isna(), "image"].iloc[0]
            raise CxrbenchError(f"{path}: image '{bad_image}' is not a MIMIC-CXR pXX/pSUBJECT/sSTUDY path")
        split = df["split"].str.strip().map(_SPLITS)
        if split.isna().any():
            raise CxrbenchError(f"{path}: unknown split '{df.loc[split.isna(), 'split'].iloc[0]}'")
        meta = pd.DataFrame(
            {
                "dicom_id": df["dicom_id"].str.strip(),
                "subject_id": df["subject_id"].str.strip(),
                "study_id": parts["study"],
                "split": split,
            }
        )
        readings.append(pd.concat([meta, certainty_to_label(certainty)], axis=1))
    table = pd.concat(readings, ignore_index=True)
    names = [c for c in table.columns if c not in ("dicom_id", "subject_id", "study_id", "split")]
    if labels == "ssl13":
        names = list(SSL13_LABELS)
        for name in names:
            if name not in table:
                table[name] = np.nan

    grouped = table.groupby("dicom_id", sort=False)
    votes = table[names]
    n_known = votes.notna().groupby(table["dicom_id"], sort=False).sum()
    n_pos = (votes == 1.0).groupby(table["dicom_id"], sort=False).sum()
    n_neg = (votes == 0.0).groupby(table["dicom_id"], sort=False).sum()
    combined = np.where(2 * n_pos > n_known, 1.0, np.where(2 * n_neg > n_known, 0.0, -1.0))
    combined = pd.DataFrame(combined, index=n_known.index, columns=names).where(n_known > 0)
    first = grouped[["subject_id", "study_id", "split"]].first()

    view = pd.Series(None, index=first.index, dtype=object)
    meta_names = [f"{mimic_cxr.PREFIX}metadata.csv.gz", f"{mimic_cxr.PREFIX}metadata.csv"]
    meta_path = next((mimic_root / n for n in meta_names if (mimic_root / n).exists()), None)
    if meta_path is not None:
        mimic_meta = mimic_cxr.read_ids(meta_path, ["dicom_id", "ViewPosition"])
        positions = mimic_meta.drop_duplicates("dicom_id").set_index("dicom_id")["ViewPosition"]
        view = first.index.to_series().map(positions).map(normalise_view)

    dicom = first.index.to_series()
    out = pd.DataFrame(
        {
            "path": mimic_cxr.image_paths(mimic_root, first["subject_id"], first["study_id"], dicom),
            "sample_id": dicom,
            "patient_id": first["subject_id"],
            "study_id": first["study_id"],
            "view": view,
            "sex": None,
            "age": np.nan,
            "split": first["split"],
        }
    )
    out = pd.concat([out, combined], axis=1).reset_index(drop=True)
    return RawDataset(frame=out, labels=names, notes={"label_set": labels})
