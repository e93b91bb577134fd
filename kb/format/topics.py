"""The fixed topics an answer belongs to: the sections of the Deep Learning Specialization.

A learner recognises where a question comes from by course and week, so the index groups answers
by these topics, in this order. An answer names one in its front matter (`topic: <key>`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topic:
    key: str
    title: str
    where: str  # the course and week it follows, as a learner would look for it


TOPICS: tuple[Topic, ...] = (
    Topic("neural-network-basics", "Neural-network basics: logistic regression, cost, gradient descent, vectorization", "Course 1, week 2"),
    Topic("shallow-networks", "Shallow neural networks: activation functions, initialization, backpropagation", "Course 1, week 3"),
    Topic("deep-networks", "Deep neural networks: shapes, forward and backward passes, caches", "Course 1, week 4"),
    Topic("practical-aspects", "Practical aspects: data splits, bias and variance, regularization, gradients", "Course 2, week 1"),
    Topic("optimization", "Optimization algorithms: mini-batches, momentum, Adam, learning-rate decay", "Course 2, week 2"),
    Topic("tuning-batchnorm-softmax", "Hyperparameter tuning, batch normalization and softmax", "Course 2, week 3"),
    Topic("ml-strategy", "Structuring machine-learning projects: metrics, error analysis, data mismatch", "Course 3"),
    Topic("convolutional-networks", "Convolutional neural networks", "Course 4"),
    Topic("sequence-models", "Sequence models: recurrent networks, embeddings, attention", "Course 5"),
)
BY_KEY: dict[str, Topic] = {topic.key: topic for topic in TOPICS}
