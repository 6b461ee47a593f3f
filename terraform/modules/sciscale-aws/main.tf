# sciscale on AWS: a private VPC, EKS with a system pool and on-demand/spot GPU pools, the KubeRay operator,
# one KMS-encrypted S3 bucket (datasets/, runs/, mlflow-artifacts/), RDS Postgres for MLflow, and IRSA roles
# that let the Ray pods and the MLflow server reach only their own prefixes of the bucket.
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  namespace  = "sciscale"
  tags       = merge({ "app.kubernetes.io/part-of" = "sciscale", "sciscale.io/stack" = var.name }, var.tags)
  private_subnets = [for i, _ in var.availability_zones : cidrsubnet(var.vpc_cidr, 3, i)]
  public_subnets  = [for i, _ in var.availability_zones : cidrsubnet(var.vpc_cidr, 8, 250 + i)]
}

# One customer-managed key for the bucket, EKS secrets, RDS, logs, ECR and node volumes: one place to
# audit and revoke.
resource "aws_kms_key" "main" {
  description             = "${var.name}: S3, EKS secrets, RDS, logs, ECR and EBS"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "main" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.main.key_id
}

data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_109:A key policy's Resource "*" means this key only; the account root must administer it or the key becomes unmanageable.
  # checkov:skip=CKV_AWS_111:In a key policy Resource "*" is the key itself, not every resource; write access is scoped to this key.
  # checkov:skip=CKV_AWS_356:A key policy cannot name its own key's ARN (it does not exist yet); "*" there means this key only.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }
  statement {
    sid       = "AutoScalingEncryptsNodeVolumes"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey", "kms:CreateGrant"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"]
    }
  }
}
