"""What users run — training, experiments, evidence, previews, demo data, cache warming, generator training — built
on the library below. Nothing in the library imports a job; ``cli`` parses arguments and dispatches here."""
