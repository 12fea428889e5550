"""The notebooks' "What it found" sentences and exercise checks, on hand-made inputs with known
answers: each test fails if a ranking, a comparison or a count in the sentence logic is wrong."""
import numpy as np
import pandas as pd
import pytest

from ecif.kit import exercises, findings


def _det(**auroc):
    return {m: {"auroc": a, "average_precision": a, "precision_at_k": a / 2, "recall_at_k": a / 2}
            for m, a in auroc.items()}


def test_inject_findings_counts_and_base_rate():
    mask = np.zeros(50, bool)
    mask[[1, 4, 9, 20, 33]] = True
    out = findings.inject_findings(mask, "shuffle", 0.1)
    assert out[0].startswith("5 of 50 train pairs (10.0 %)")
    assert "= 5." in out[0]
    assert "precision 0.100" in out[1]


def test_encoder_findings_loss_and_chance():
    out = findings.encoder_findings({"loss_per_epoch": [2.0, 1.5, 1.0], "batch_size": 4}, pretrained=False)
    assert "from 2.000 after epoch 1 to 1.000 after epoch 3 (50.0 % lower)" in out[0]
    assert "log(4) = 1.386" in out[1] and "0.72 of that" in out[1]
    assert findings.encoder_findings({"arch": "ViT"}, pretrained=True)[0].startswith("No training")
    assert "after 2 epochs the loss was 1.500" in findings.exercise_epochs({"loss_per_epoch": [2.0, 1.5, 1.0]}, 2)[0]


def test_finetune_findings_convexity_and_accuracy_direction():
    m = {"fit": {"converged": True, "iterations": 7, "grad_norm": 1e-12, "n_params": 9, "n_train": 20,
                 "n_misaligned": 4},
         "hessian": {"min_eigenvalue": 0.05, "max_eigenvalue": 2.0},
         "zero_shot": {"base": 0.8, "fitted": 0.75}}
    out = findings.finetune_findings(m, lam=0.1)
    assert "converged in 7" in out[0]
    assert "-0.05" in out[1] and "not convex" in out[1]
    assert "lowered" in out[2] and "-0.050" in out[2]
    out = findings.finetune_findings(dict(m, zero_shot={"base": 0.7, "fitted": 0.75}), lam=0.01)
    assert "already convex" in out[1] and "raised" in out[2]
    assert len(findings.finetune_findings(dict(m, zero_shot={"base": None, "fitted": None}), lam=0.1)) == 2


def test_exercise_lam_shifts_every_eigenvalue():
    h = np.diag([0.3, 1.0, 2.0])
    out = findings.exercise_lam(0.1, h, 0.0)[0]
    assert "0.3;" in out and "0.2," in out and "still a strict minimum" in out
    assert "no longer" in findings.exercise_lam(0.5, h, 0.0)[0]
    # block mode: no dense Hessian, the Lanczos estimate of the smallest eigenvalue is shifted
    out = findings.exercise_lam(0.3, {"hessian": None, "min_eigenvalue": 0.35, "max_eigenvalue": 9.0}, 0.0)[0]
    assert "0.35;" in out and "0.05," in out and "still a strict minimum" in out
    assert "no longer" in findings.exercise_lam(0.5, {"hessian": None, "min_eigenvalue": 0.35}, 0.0)[0]
    assert findings.exercise_lam(0.1, {"hessian": h, "min_eigenvalue": 0.3}, 0.0) == findings.exercise_lam(0.1, h, 0.0)


def test_loo_findings_rank_and_role_gain():
    stats = {"ecif": {"pearson": 0.9, "spearman": 0.95}, "newton": {"pearson": 0.9, "spearman": 0.97},
             "positive": {"pearson": 0.8, "spearman": 0.85}, "negative": {"pearson": 0.1, "spearman": 0.2}}
    out = findings.loo_findings(stats)
    assert "rank 2 of 4" in out[0] and "Newton" in out[0]
    assert "raises the Spearman by 0.100" in out[1]
    stats["positive"]["spearman"] = 0.99
    out = findings.loo_findings(stats)
    assert "rank 3 of 4" in out[0] and "positive-only" in out[0]
    assert "lowers the Spearman by 0.040" in out[1]


def test_detect_findings_ranking_flips_with_inputs():
    out = findings.detect_findings(_det(ecif=0.8, cosine=0.9, random=0.5, tracin=0.7), k=10, n=50)
    assert out[0] == "ECIF ranks 2 of 4 methods by AUROC (0.800); the best is cosine (0.900)."
    assert "finds 4 misaligned" in out[1] and "2.0x the base rate 0.200" in out[1]
    assert "Cheaper filters beat it here (cosine)" in out[2]
    out = findings.detect_findings(_det(ecif=0.95, cosine=0.9, random=0.5), k=10, n=50)
    assert out[0].startswith("ECIF ranks 1 of 3") and "best is ecif" in out[0]
    assert out[2].startswith("No cheap filter")


def test_exercise_k_and_random():
    mask = np.array([True, True, False, False, False, False])
    scores = {"ecif": np.array([6.0, 1.0, 5.0, 2.0, 3.0, 0.0]), "cosine": np.array([6.0, 5.0, 1.0, 2.0, 3.0, 0.0])}
    out = exercises.exercise_k(scores, mask, 2)
    assert "k = 2: precision 0.500, recall 0.500" in out[0] and "k = 4: precision 0.250, recall 0.500" in out[0]
    assert "k = 2: precision 1.000, recall 1.000" in out[1] and "k = 4: precision 0.500, recall 1.000" in out[1]
    assert "base rate 0.333" in exercises.exercise_random(mask)[0]


def _sweep():
    return {"detection_sweep": {
        "shuffle": {m: {"auroc_mean": a} for m, a in {"ecif": 0.9, "cosine": 0.95, "random": 0.5}.items()},
        "systematic_swap": {m: {"auroc_mean": a} for m, a in {"ecif": 0.7, "cosine": 0.6, "random": 0.5}.items()}}}


def test_sweep_findings_winner_rank_and_hardest_kind():
    out = findings.sweep_findings(_sweep())
    assert out[0] == "shuffle: the best by mean AUROC is cosine (0.950); ECIF ranks 2 of 3 (0.900)."
    assert out[1].startswith("systematic_swap: the best by mean AUROC is ecif (0.700); ECIF ranks 1 of 3")
    assert "hardest kind is systematic_swap (AUROC 0.700), the easiest shuffle (0.900)" in out[2]
    M = {"detection_summary": _sweep()}
    assert findings.exercise_hardest_kind(M) == ["systematic_swap: ecif AUROC 0.700", "shuffle: ecif AUROC 0.900"]


def test_exercise_sweep_subset_changes_winner():
    rows = []
    for rate, aur in ((0.1, {"ecif": 0.9, "cosine": 0.8}), (0.3, {"ecif": 0.5, "cosine": 0.9})):
        for seed in (0, 1):
            for m, a in aur.items():
                rows.append({"kind": "shuffle", "rate": rate, "seed": seed, "method": m, "auroc": a,
                             "average_precision": a, "precision_at_k": a, "recall_at_k": a})
    long = pd.DataFrame(rows)
    assert exercises.exercise_sweep_subset(long, rate=0.1) == [
        "shuffle: winner by AUROC cosine (0.850) on the whole sweep, ecif (0.900) with rate = 0.1"]
    assert exercises.exercise_sweep_subset(long, exclude=["cosine"]) == [
        "shuffle: winner by AUROC cosine (0.850) on the whole sweep, ecif (0.700) with cosine left out"]


def _tab(col, values, spearman):
    return pd.DataFrame([{col: v, "variant": "ecif", "spearman": s, "min_eigenvalue": 0.1 + v if col == "lam" else 0.1,
                          "neg_to_pos": s / 4} for v, s in zip(values, spearman)])


def test_ablation_findings_carrier_and_extremes():
    roles = {"positive": {"spearman": 0.8}, "negative": {"spearman": 0.3}, "ecif": {"spearman": 0.83}}
    out = findings.ablation_findings(roles, _tab("damping", [0.0, 0.1, 1.0], [0.99, 0.95, 0.8]),
                                     _tab("lam", [0.03, 0.1], [0.7, 0.9]), _tab("batch_size", [32, 64], [0.9, 0.94]))
    assert "the positive role carries" in out[0]
    assert out[1] == "damping μ: ECIF's Spearman is highest at 0.0 (0.990) and lowest at 1.0 (0.800)."
    assert "highest at 0.1 (0.900) and lowest at 0.03 (0.700)" in out[2]
    assert "0.23 to 0.23" in out[4] or "0.23 to 0.24" in out[4]
    roles["ecif"]["spearman"] = 0.99
    out = findings.ablation_findings(roles, _tab("damping", [0.0, 0.1], [0.9, 0.9]), _tab("lam", [0.1], [1.0]),
                                     _tab("batch_size", [32], [1.0]))
    assert "together predict clearly better than either alone (+0.190 over the positive role)" in out[0]
    assert out[1] == "damping μ: ECIF's Spearman is 0.900 at every value of the sweep (0.0, 0.1)."
    roles["ecif"]["spearman"] = 0.88
    roles["negative"]["spearman"] = 0.85
    assert "the negative role carries" in findings.ablation_findings(roles, _tab("damping", [0.0], [1.0]),
                                                                     _tab("lam", [0.1], [1.0]),
                                                                     _tab("batch_size", [32], [1.0]))[0]
    lines = findings.exercise_lam_curvature(_tab("lam", [0.03, 0.1], [0.7, 0.9]))
    assert lines == ["lam = 0.03: smallest eigenvalue 0.1300, minus lam +0.1000",
                     "lam = 0.1: smallest eigenvalue 0.2000, minus lam +0.1000"]


def _cleaning(ecif_acc):
    return {"cleaning": {"none": {"accuracy_mean": 0.8, "accuracy_std": 0.0, "misaligned_removed": 0.0},
                         "random": {"accuracy_mean": 0.81, "accuracy_std": 0.01, "misaligned_removed": 2.0},
                         "ecif": {"accuracy_mean": ecif_acc, "accuracy_std": 0.0, "misaligned_removed": 9.0},
                         "cosine": {"accuracy_mean": 0.85, "accuracy_std": 0.0, "misaligned_removed": 8.0}},
            "cleaning_n_removed": 10,
            "editing": {"harmful_ecif": {"predicted_val_change": -0.3, "actual_val_change": -0.25,
                                         "acc_edited": 0.84, "acc_retrained": 0.86}}}


def test_cleaning_findings_best_method_and_random_band():
    out = findings.cleaning_findings(_cleaning(0.9))
    assert out[0].startswith("Removing 10 pairs: the best method is ecif (test accuracy 0.900, 9 misaligned")
    assert "0.810 ± 0.010 for random" in out[0]
    assert "+0.100 against no removal" in out[1]
    assert "-0.300" in out[2] and "-0.250" in out[2]
    behind = findings.cleaning_findings(_cleaning(0.82))
    assert "best method is cosine" in behind[0]
    assert "cosine is ahead of it by 0.030, beyond two seed-to-seed std (0.020)" in behind[1]  # where ECIF loses
    assert "ahead of it by 0.005, within two" in findings.cleaning_findings(_cleaning(0.845))[1]
    assert "ahead" not in out[1]  # ECIF best: nothing ahead of it
    assert "above two" in findings.exercise_cleaning_vs_random({"cleaning": _cleaning(0.9)})[0]
    assert "within two" in findings.exercise_cleaning_vs_random({"cleaning": _cleaning(0.82)})[0]
    assert "below two" in findings.exercise_cleaning_vs_random({"cleaning": _cleaning(0.7)})[0]


def test_cleaning_findings_reference_rows_and_no_ranking_within_noise():
    m = _cleaning(0.9)
    m["cleaning"].update({"oracle": {"accuracy_mean": 0.95, "accuracy_std": 0.0, "misaligned_removed": 10.0},
                          "clean": {"accuracy_mean": 0.97, "accuracy_std": 0.0, "misaligned_removed": 0.0},
                          "gap": 0.15, "random_std": 0.01, "separable": True})
    out = findings.cleaning_findings(m)
    assert out[0] == ("No removal gives test accuracy 0.800; removing exactly the injected pairs (oracle) gives "
                      "0.950, fitting on the true captions 0.970.")
    assert "the best method is ecif" in out[1]  # the reference rows are never "the best method"
    m["cleaning"].update({"gap": 0.005, "separable": False})
    out = findings.cleaning_findings(m)
    assert "cannot rank the methods" in out[1] and "+0.0050" in out[1]
    assert not any("best method" in line for line in out)


def test_exercise_fraction_counts_misaligned_in_top():
    mask = np.array([True, False, True, False, False, False, False, False, False, False])
    scores = pd.DataFrame({"ecif": np.arange(10.0)[::-1], "cosine": np.arange(10.0)})
    out = findings.exercise_fraction(scores, mask, 0.2)
    assert out == ["ecif     top 2 (20%): 1 of the 2 misaligned pairs", "cosine   top 2 (20%): 0 of the 2 misaligned pairs"]


def _traceback(random_gain):
    return {"traceback": {"ris_k5": {"fix_rate": 0.5, "improve_rate": 1.0, "margin_gain": 0.4, "misaligned_removed": 1.0},
                          "ris_k10": {"fix_rate": 1.0, "improve_rate": 1.0, "margin_gain": 0.8, "misaligned_removed": 2.0},
                          "random_k10": {"fix_rate": 0.0, "improve_rate": 0.5, "margin_gain": random_gain,
                                         "misaligned_removed": 2.0}},
            "test_mispredicted": 12, "traceback_items": 4, "gallery_misaligned_share": 0.25}


def test_traceback_findings_uses_largest_k_and_random():
    out = findings.traceback_findings(_traceback(0.1))
    assert out[0] == "12 test items are mispredicted; 4 were traced."
    assert "top 10 culprits by RIS" in out[1] and "fixes 100.0 %" in out[1] and "(8x the margin gain)" in out[1]
    assert "x the margin gain" not in findings.traceback_findings(_traceback(-0.1))[1]
    assert out[2] == "The control: removing 10 random pairs fixes 0.0 % of the items."  # the random control's fixes
    rates = pd.DataFrame({"method": ["is", "ris"], "k": [5, 5], "misaligned_removed": [3.0, 1.0]}).set_index(["method", "k"])
    assert findings.exercise_traceback_misaligned(rates) == ["is     k = 5: 3.00 misaligned among the removed",
                                                            "ris    k = 5: 1.00 misaligned among the removed"]


def test_summary_findings_one_line_per_stage():
    M = {"ablation": {"ablation_roles": {"ecif": {"spearman": 0.9}, "positive": {"spearman": 0.8},
                                         "negative": {"spearman": 0.1}}},
         "detection_summary": {"detection_winner": {"shuffle": {"auroc": "cosine", "ecif_rank_auroc": 3}}},
         "cleaning": _cleaning(0.9), "traceback": _traceback(0.1)}
    out = findings.summary_findings(M)
    assert len(out) == 4
    assert "ECIF 0.900, positive-only 0.800, negative-only 0.100" in out[0]
    assert out[1] == "Detection winners by AUROC: shuffle cosine (ECIF rank 3)."
    assert "best method is ecif" in out[2] and "by RIS" in out[3]


def test_exercise_clean_only_splits_pairs():
    table = pd.DataFrame({"misaligned": [True, True, True, False, False, False],
                          "actual": [-3.0, -2.0, -1.0, 0.1, 0.2, 0.3],
                          "ecif": [-3.0, -2.0, -1.0, 0.3, 0.2, 0.1]})
    out = findings.exercise_clean_only(table)
    assert "Spearman 0.771" in out[0]
    assert "Spearman -1.000" in out[1] and out[1].startswith("clean")
    assert "Spearman 1.000" in out[2]


def test_show_prints_each_line(capsys):
    findings.show(["a", "b"])
    assert capsys.readouterr().out == "a\nb\n"


# ------------------------------------------------------------------------------ 11 emi
def _emi_grid():
    """Two modalities of 4 scenarios, 2 shift seeds each: EMID follows the accuracy drop in both;
    the bound follows it within a modality but sits on another scale per modality."""
    rows = []
    for modality, offset in (("visual", 0.0), ("text", 10.0)):
        for i in range(4):
            for seed in (0, 1):
                rows.append({"scenario": f"{modality}{i}", "modality": modality, "seed": seed,
                             "acc_drop": 0.1 * i + 0.01 * (modality == "text"), "emid": 5.0 * i + seed,
                             "bound": offset - i if modality == "text" else float(i)})
    rows.append({"scenario": "joint0", "modality": "joint", "seed": 0, "acc_drop": 0.2, "emid": 1.0, "bound": 1.0})
    return pd.DataFrame(rows)


def test_exercise_emi_modality_correlates_within_each_modality():
    out = exercises.exercise_emi_modality(_emi_grid(), n_boot=50)
    assert out[0].startswith("all (9 scenarios)")
    assert out[1].startswith("visual (4 scenarios): Spearman with the accuracy drop, EMID 1.000")
    assert "bound 1.000" in out[1] and "bound -1.000" in out[2]  # text: bound falls as the drop grows
    assert out[3] == "joint (1 scenario): too few for a correlation."


def test_exercise_emi_one_seed_against_all_seeds():
    rows = [{"kind": "shuffle", "rate": 0.0, "noise_seed": s, "emi": -5.0} for s in (0, 1, 2)]
    # 10 %: seed 0 falls by 2, the others rise: mean 0, std 2 -> not a real fall
    rows += [{"kind": "shuffle", "rate": 0.1, "noise_seed": s, "emi": e} for s, e in ((0, -7.0), (1, -3.0), (2, -5.0))]
    # 20 %: every seed falls by about 10 -> a real fall
    rows += [{"kind": "shuffle", "rate": 0.2, "noise_seed": s, "emi": e} for s, e in ((0, -15.0), (1, -16.0), (2, -14.0))]
    out = exercises.exercise_emi_one_seed(pd.DataFrame(rows), 0)
    assert out[0] == ("shuffle, EMI change from the clean fit, seed 0 alone: 10% -2.00 (all 3: +0.00 ± 2.00); "
                      "20% -10.00 (all 3: -10.00 ± 1.00).")
    assert out[1] == "Seed 0 alone shows a fall of EMI in 2 cells; over all 3 seeds the fall exceeds one std in 1 of them."
    assert "in 1 cells" in exercises.exercise_emi_one_seed(pd.DataFrame(rows), 1)[1]  # seed 1 rises at 10 %
    with pytest.raises(ValueError, match="not run"):
        exercises.exercise_emi_one_seed(pd.DataFrame(rows), 7)


def test_exercise_relabel_merge_bijection_keeps_mi():
    from ecif.data.embedded import shapes
    from ecif.experiments.emi import discrete_mi

    ds = shapes(0, sizes={"pretrain": 4, "train": 4, "val": 4, "test": 80}, image_size=8)
    swap, merge = exercises.exercise_relabel_merge(ds)
    assert swap.startswith("swap (red <-> blue)") and "discrete EMI +0.0000 nats" in swap
    colour = np.asarray(ds["test"].attributes["color"])
    red, blue = (ds.spec.values["color"].index(c) for c in ("red", "blue"))
    unchanged = 1 - np.mean(colour == red)
    assert f"{unchanged:.1%} of the captions unchanged" in merge
    # the captions are functions of the attributes, so MI(attributes; captions) is the captions'
    # entropy, and merging red into blue loses the entropy that told red from blue
    attrs = {k: np.asarray(v) for k, v in ds["test"].attributes.items()}
    clean = np.asarray(ds.spec.render(attrs))
    merged = np.asarray(ds.spec.render({**attrs, "color": np.where(colour == red, blue, colour)}))
    lost = discrete_mi(clean, clean) - discrete_mi(merged, merged)
    assert lost > 0.05 and f"discrete EMI {-lost:+.4f} nats" in merge


def test_peers_findings_rank_the_peers_and_say_when_none_ran():
    from ecif.kit.findings import peers_findings

    row = lambda s, a: {"spearman": s, "spearman_clean": s - 0.1, "pearson": s, "auroc": a}  # noqa: E731
    stats = {"ecif": row(0.95, 0.90), "positive": row(0.80, 0.85), "dattri_cg": row(0.81, 0.95)}
    lines = peers_findings(stats, ["dattri_cg"])
    assert lines[0].startswith("Best peer against retraining: dattri_cg, Spearman 0.810")
    assert "0.010 above the positive" in lines[1] and lines[-1].endswith("dattri_cg beats ECIF.")
    none = peers_findings(stats, [])
    assert len(none) == 1 and none[0].startswith("No peer ran.") and "ECIF Spearman 0.950" in none[0]
