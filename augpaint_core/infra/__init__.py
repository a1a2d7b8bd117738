"""Below every phase: storage by URI (local or S3), MLflow tracking, dataset versions and artifact metadata.

(Named ``infra``, not ``platform``, so that it never shadows the standard library's ``platform``.)"""
