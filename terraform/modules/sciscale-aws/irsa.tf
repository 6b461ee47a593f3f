# IAM roles for the sciscale service accounts. Least privilege on the one bucket:
#   sciscale-ray     reads datasets/, reads and writes runs/ (checkpoints, run records)
#   sciscale-mlflow  reads and writes mlflow-artifacts/
locals {
  oidc_host = replace(aws_iam_openid_connect_provider.eks.url, "https://", "")
  irsa = {
    ray = {
      service_account = "sciscale-ray"
      read_prefixes   = ["datasets/", "runs/"]
      write_prefixes  = ["runs/"]
    }
    mlflow = {
      service_account = "sciscale-mlflow"
      read_prefixes   = ["mlflow-artifacts/"]
      write_prefixes  = ["mlflow-artifacts/"]
    }
    cluster-autoscaler = {
      service_account = "cluster-autoscaler"
      read_prefixes   = []
      write_prefixes  = []
    }
  }
  irsa_namespaces = { ray = local.namespace, mlflow = local.namespace, cluster-autoscaler = "kube-system" }
}

resource "aws_iam_role" "irsa" {
  for_each = local.irsa
  name     = "${var.name}-${each.key}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = "sts:AssumeRoleWithWebIdentity"
      Principal = { Federated = aws_iam_openid_connect_provider.eks.arn }
      Condition = {
        StringEquals = {
          "${local.oidc_host}:sub" = "system:serviceaccount:${local.irsa_namespaces[each.key]}:${each.value.service_account}"
          "${local.oidc_host}:aud" = "sts.amazonaws.com"
        }
      }
    }]
  })
  tags = local.tags
}

data "aws_iam_policy_document" "bucket_access" {
  for_each = { for k, v in local.irsa : k => v if length(v.read_prefixes) > 0 }
  statement {
    sid       = "ListOwnPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.main.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = flatten([for p in each.value.read_prefixes : [p, "${p}*"]])
    }
  }
  statement {
    sid       = "Read"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = [for p in each.value.read_prefixes : "${aws_s3_bucket.main.arn}/${p}*"]
  }
  statement {
    sid       = "Write"
    actions   = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    resources = [for p in each.value.write_prefixes : "${aws_s3_bucket.main.arn}/${p}*"]
  }
  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "bucket_access" {
  for_each = data.aws_iam_policy_document.bucket_access
  name     = "sciscale-bucket"
  role     = aws_iam_role.irsa[each.key].id
  policy   = each.value.json
}

# The cluster autoscaler may resize only this cluster's node groups (tag condition); the Describe calls
# cannot be scoped to resources by AWS.
data "aws_iam_policy_document" "cluster_autoscaler" {
  statement {
    sid = "Describe"
    actions = [
      "autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations", "autoscaling:DescribeScalingActivities",
      "autoscaling:DescribeTags", "ec2:DescribeImages", "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions", "ec2:GetInstanceTypesFromInstanceRequirements",
    ]
    resources = ["*"]
  }
  statement {
    sid       = "DescribeOwnNodegroups"
    actions   = ["eks:DescribeNodegroup"]
    resources = ["arn:${local.partition}:eks:${var.region}:${local.account_id}:nodegroup/${var.name}/*/*"]
  }
  statement {
    sid       = "ScaleOwnGroups"
    actions   = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
    resources = ["arn:${local.partition}:autoscaling:${var.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/eks-*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${var.name}"
      values   = ["owned"]
    }
  }
}

resource "aws_iam_role_policy" "cluster_autoscaler" {
  name   = "cluster-autoscaler"
  role   = aws_iam_role.irsa["cluster-autoscaler"].id
  policy = data.aws_iam_policy_document.cluster_autoscaler.json
}
