"""mteb's own STS evaluation, fed our data: the reference l2v's STS numbers are checked against."""

from __future__ import annotations


def mteb_sts_spearman(encoder, sentences1: list[str], sentences2: list[str], scores: list[float]) -> float:
    """Cosine Spearman x100 as mteb 2.x computes it (AnySTSEvaluator + AbsTaskSTS scoring)."""
    import datasets
    from mteb._evaluators.any_sts_evaluator import AnySTSEvaluator
    from mteb.mocks.mock_tasks.sts import MockSTSTask
    from mteb.timing import TimingStack

    task = MockSTSTask()
    dataset = datasets.Dataset.from_dict({"sentence1": sentences1, "sentence2": sentences2, "score": scores})
    evaluator = AnySTSEvaluator(
        dataset, ("sentence1", "sentence2"), task_metadata=task.metadata, hf_split="test", hf_subset="default",
        input1_prompt_type=None, input2_prompt_type=None, timer=TimingStack(),
    )
    raw = evaluator(encoder, encode_kwargs={"batch_size": 32})
    low, high = min(scores), max(scores)
    normalized = [(s - low) / (high - low) for s in scores]
    return 100 * task._calculate_scores(raw, normalized)["cosine_spearman"]
