/** Keys for an S3 bucket (the `s3:` section of the config file). */
export type S3Credentials = { accessKeyId: string; secretAccessKey: string; sessionToken?: string };

/** Where blobs are kept: the local filesystem (under the data dir), or an S3 bucket. */
export type Storage =
  | { kind: "fs" }
  | {
      kind: "s3";
      bucket: string;
      /** Without leading or trailing slash; "" for the bucket root. */
      prefix: string;
      /** null: AWS itself. */
      endpoint: string | null;
      region: string;
      /** Absent: the SDK's default chain (AWS_ACCESS_KEY_ID etc., profiles, instance roles). */
      credentials?: S3Credentials;
    };
