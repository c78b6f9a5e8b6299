"""Video backends: turn a storyboard keyframe into a clip."""
