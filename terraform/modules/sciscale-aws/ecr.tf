# Registry for the image built from infra/container/Dockerfile.
resource "aws_ecr_repository" "sciscale" {
  name                 = "${var.name}/sciscale"
  image_tag_mutability = "IMMUTABLE" # a run's image tag always means the same bits
  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.main.arn
  }
  image_scanning_configuration {
    scan_on_push = true
  }
  tags = local.tags
}

resource "aws_ecr_lifecycle_policy" "sciscale" {
  repository = aws_ecr_repository.sciscale.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "keep the 50 newest images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 50 }
      action       = { type = "expire" }
    }]
  })
}
