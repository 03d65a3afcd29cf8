"""Six plainly emotional lines of a two-speaker dialogue (speaker 0 or 1, the line's emotion, the line):
whatever the voice or the face, a model that follows the evidence labels them by their words."""

LINES = (
    (0, "joy", "I got the job! I am so happy, this is wonderful!"),
    (1, "anger", "You lied to me again! I am so angry with you!"),
    (0, "sadness", "My dog died this morning. I miss him so much."),
    (1, "surprise", "What? You are getting married? I had no idea!"),
    (0, "fear", "Someone is breaking in. I am so scared!"),
    (1, "disgust", "Ew, a hair in my soup. That is disgusting!"),
)


def right(labels: list[str]) -> int:
    """How many of `labels` (one per line) are the line's emotion."""
    return sum(label == emotion for label, (_, emotion, _) in zip(labels, LINES))
