import torch

from anogan.nets import scores as S


def test_residual_is_the_per_image_sum_of_absolute_differences():
    x = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    gz = torch.tensor([[[[0.0, -1.0], [0.0, 1.0]]], [[[1.0, 1.0], [-1.0, 0.0]]]])
    torch.testing.assert_close(S.residual(x, gz), torch.tensor([2.5, 3.0]))
    torch.testing.assert_close(S.residual_map(x, gz)[0], torch.tensor([[1.0, 0.0], [0.5, 1.0]]))


def test_discrimination_is_feature_matching_in_l1():
    fx = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    fgz = torch.tensor([[1.0, 0.0, 4.0], [-1.0, 1.0, 0.5]])
    torch.testing.assert_close(S.discrimination(fx, fgz), torch.tensor([3.0, 2.5]))


def test_reference_discrimination_is_cross_entropy_against_real():
    logits = torch.tensor([0.0, 2.0, -3.0])
    expected = torch.log1p(torch.exp(-logits))  # -log sigmoid(l)
    torch.testing.assert_close(S.reference_discrimination(logits), expected)
    assert abs(float(S.reference_discrimination(torch.tensor([0.0]))) - 0.693147) < 1e-5


def test_anomaly_scores_weight_residual_and_discrimination_by_lambda():
    r, d = torch.tensor([10.0, 0.0]), torch.tensor([0.0, 20.0])
    torch.testing.assert_close(S.anomaly(r, d, 0.1), torch.tensor([9.0, 2.0]))
    torch.testing.assert_close(S.reference_anomaly(r, d, 0.5), torch.tensor([5.0, 10.0]))
    torch.testing.assert_close(S.mapping_loss(r, d, 0.0), r)
    torch.testing.assert_close(S.mapping_loss(r, d, 1.0), d)


def test_discriminator_score_is_the_log_odds_of_one_minus_probability_of_real():
    logits = torch.tensor([0.0, 10.0, -10.0])
    p = S.discriminator(logits)
    torch.testing.assert_close(torch.sigmoid(p), 1 - torch.sigmoid(logits))
    assert p[2] > p[0] > p[1]  # D says "fake" -> more anomalous


def test_discriminator_score_does_not_saturate_on_very_negative_logits():
    """P_D = sigmoid(-logit) is exactly 1.0 in float32 below logit -17: the two most anomalous images
    tie and AUROC drops from 1 to 0.75 on this hand example; the log-odds keep them apart."""
    from anogan.metrics.detection import auroc

    logits = torch.tensor([5.0, -20.0, -25.0, -30.0])  # two normal, then two anomalous images
    labels = torch.tensor([0, 0, 1, 1])
    assert torch.sigmoid(-logits)[1:].eq(1.0).all()  # the saturation this guards against
    assert auroc(torch.sigmoid(-logits), labels) == 0.75
    assert auroc(S.discriminator(logits), labels) == 1.0
