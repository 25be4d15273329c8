"""Speech in and text out: audio loading, transcription, evaluation (WER and its intervals), the sample clips."""
