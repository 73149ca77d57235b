import t from "tap";
import {
  digestAlgorithm,
  digestHex,
  dockerHubRepository,
  isValidRepositoryName,
  isValidTag,
  parseDigest,
  parseReference,
  type Digest,
} from "../../src/registry/reference.ts";
import {
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
  MANIFEST_ACCEPT,
  MANIFEST_MEDIA_TYPES,
  OCI_INDEX,
  OCI_MANIFEST,
  detectManifestMediaType,
  isIndexMediaType,
  isManifestMediaType,
  type ManifestMediaType,
} from "../../src/registry/media-types.ts";
import { formatBearerChallenge, parseWwwAuthenticate, type Challenge } from "../../src/registry/challenge.ts";
import { bytesPreview, manifestShapeProblem } from "../../src/registry/manifest-shape.ts";
import { nextPageLink, nextPageQuery } from "../../src/registry/pagination.ts";
import { contentRange, parseRange, unsatisfiedRange, type RangeRequest } from "../../src/registry/range.ts";
import { RegistryError, defaultStatus, errorBody, type ErrorCode } from "../../src/registry/errors.ts";
import { DEFAULT_TOKEN_SECONDS, issuedToken, MAX_TOKEN_SECONDS, type IssuedToken } from "../../src/registry/token-response.ts";

const HEX_A = "e02b040291a1f8a4b49ac9d6f0d0a8839dfb62442d8f560c82e6aef5f27901a2";
const HEX_B = "5e37fde26bb93dd94c4ac179a34bd0e7a355c04c14abee03cca3e5d8824bf2c6";
const HEX_C = "6d2c52fd4cafe564cbb827bd8b4c465cd398e10626dea189f51e9f3b8165aa0c";
const HEX_D = "f2f6341eee936b00c7026b474f7451ccd0c2141d49ead9904b875178a4aa54dc";
const HEX_E = "e91d74e67973f4a061304f029ab357219bd0cefcd706a2dc311def22b351a133";
const HEX_F = "41adea1e29733d0ea9a1d1dd8c80beb3a8f090e9ec6ca50afec03d882bb21bdf";
const HEX_512 =
  "741cdada775b1e8a0f1dd4eba7375651f30903f28d57c11bcc6a8d61cea42699636e97c6d98c3732504057c486b71670002e592f1fcfcc71b155ad5ad4de0d8c";

const utf8 = (s: string) => new TextEncoder().encode(s);
const json = (v: unknown) => utf8(JSON.stringify(v));

t.test("repository names", async (t) => {
  const cases: Array<[string, boolean]> = [
    ["library/alpine", true],
    ["alpine", true],
    ["bitnami/postgresql", true],
    ["a/b/c/d", true],
    ["gitlab-org/gitlab-runner/gitlab-runner-helper", true],
    ["kube-state-metrics/kube-state-metrics", true],
    ["my_org/my__image", true],
    ["foo---bar/baz", true],
    ["registry.k8s.io.mirror/pause", true],
    ["0/1", true],
    ["Library/alpine", false], // uppercase
    ["library/Alpine", false],
    ["/library/alpine", false], // leading slash
    ["library/alpine/", false], // trailing slash
    ["library//alpine", false], // empty component
    ["", false],
    ["-alpine", false], // leading separator
    [".alpine", false],
    ["_alpine", false],
    ["alpine-", false], // trailing separator
    ["my___image", false], // three underscores is not a separator
    ["a..b", false],
    ["a.-b", false],
    ["library/alpine:latest", false],
    ["library/alpine@sha256", false],
    ["with space", false],
    ["a".repeat(255), true],
    ["a".repeat(256), false],
    [`${"a".repeat(127)}/${"b".repeat(127)}`, true], // exactly 255
    [`${"a".repeat(127)}/${"b".repeat(128)}`, false], // 256 across components
  ];
  for (const [name, valid] of cases) t.equal(isValidRepositoryName(name), valid, JSON.stringify(name));
});

t.test("docker hub repository names", async (t) => {
  const cases: Array<[string, string]> = [
    ["alpine", "library/alpine"],
    ["library/alpine", "library/alpine"],
    ["bitnami/postgresql", "bitnami/postgresql"],
    ["a/b/c", "a/b/c"],
  ];
  for (const [input, want] of cases) t.equal(dockerHubRepository(input), want, input);
});

t.test("tags", async (t) => {
  const cases: Array<[string, boolean]> = [
    ["latest", true],
    ["3.20", true],
    ["v1.2.3-rc.1", true],
    ["1.27.3-alpine3.20", true],
    ["_internal", true],
    ["UPPER_case", true],
    [`sha256-${HEX_A}.sig`, true], // cosign signature tag
    [`sha256-${HEX_A}`, true],
    [`sha256:${HEX_A}`, false], // a digest is not a tag
    ["a".repeat(128), true],
    ["a".repeat(129), false],
    [".hidden", false],
    ["-rc1", false],
    ["", false],
    ["v1+build", false],
    ["has space", false],
    ["a/b", false],
    ["caf\u00e9", false],
  ];
  for (const [tag, valid] of cases) t.equal(isValidTag(tag), valid, JSON.stringify(tag));
});

t.test("digests", async (t) => {
  const cases: Array<[string, { algorithm: string; hex: string } | null]> = [
    [`sha256:${HEX_A}`, { algorithm: "sha256", hex: HEX_A }],
    [`sha512:${HEX_512}`, { algorithm: "sha512", hex: HEX_512 }],
    [`sha256:${HEX_A.toUpperCase()}`, null], // uppercase hex
    [`SHA256:${HEX_A}`, null], // uppercase algorithm
    [`sha256:${HEX_A.slice(1)}`, null], // 63 hex
    [`sha256:${HEX_A}0`, null], // 65 hex
    [`sha512:${HEX_A}`, null], // sha256 length under sha512
    [`sha256:${HEX_512}`, null],
    [`sha384:${HEX_512.slice(0, 96)}`, null], // unknown algorithm
    [`md5:${HEX_A.slice(0, 32)}`, null],
    [HEX_A, null], // missing colon
    [`sha256${HEX_A}`, null],
    [`sha256:${HEX_A.slice(0, 63)}g`, null], // non-hex
    [`sha256::${HEX_A.slice(1)}`, null],
    [` sha256:${HEX_A}`, null],
    [`sha256:${HEX_A}\n`, null],
    ["sha256:", null],
    ["", null],
  ];
  for (const [input, want] of cases) {
    const d = parseDigest(input);
    if (want === null) {
      t.equal(d, null, JSON.stringify(input));
    } else {
      t.equal(d, input, input);
      t.equal(digestAlgorithm(d!), want.algorithm);
      t.equal(digestHex(d!), want.hex);
    }
  }
});

t.test("manifest references", async (t) => {
  const cases: Array<[string, ReturnType<typeof parseReference>]> = [
    ["latest", { kind: "tag", tag: "latest" }],
    ["3.20", { kind: "tag", tag: "3.20" }],
    [`sha256-${HEX_A}.att`, { kind: "tag", tag: `sha256-${HEX_A}.att` }],
    [`sha256:${HEX_A}`, { kind: "digest", digest: `sha256:${HEX_A}` as Digest }],
    [`sha512:${HEX_512}`, { kind: "digest", digest: `sha512:${HEX_512}` as Digest }],
    [`sha256:${HEX_A.toUpperCase()}`, null], // has ":" so it must be a valid digest
    ["sha256:abc", null],
    ["latest:", null],
    ["", null],
    [".latest", null],
    ["a".repeat(129), null],
  ];
  for (const [input, want] of cases) t.strictSame(parseReference(input), want, input);
});

t.test("media type constants", async (t) => {
  t.equal(MANIFEST_MEDIA_TYPES.length, 4);
  const accepted = MANIFEST_ACCEPT.split(",").map((s) => s.trim());
  t.strictSame([...accepted].sort(), [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST].sort());
  for (const mt of MANIFEST_MEDIA_TYPES) t.ok(isManifestMediaType(mt), mt);
  for (const other of ["application/json", "application/vnd.docker.distribution.manifest.v1+prettyjws", `${OCI_MANIFEST}; charset=utf-8`, ""]) {
    t.notOk(isManifestMediaType(other), other);
  }
  const index: Array<[string, boolean]> = [
    [OCI_INDEX, true],
    [DOCKER_MANIFEST_LIST, true],
    [OCI_MANIFEST, false],
    [DOCKER_MANIFEST, false],
    ["application/json", false],
  ];
  for (const [mt, want] of index) t.equal(isIndexMediaType(mt), want, mt);
});

t.test("manifest media type detection", async (t) => {
  const dockerBody = json({ schemaVersion: 2, mediaType: DOCKER_MANIFEST, config: {}, layers: [] });
  const listBody = json({ schemaVersion: 2, mediaType: DOCKER_MANIFEST_LIST, manifests: [] });
  const bareIndex = json({ schemaVersion: 2, manifests: [] });
  const bareImage = json({ schemaVersion: 2, config: { mediaType: "x", digest: `sha256:${HEX_A}`, size: 1 }, layers: [] });
  const cases: Array<[string, Uint8Array, string | null, ManifestMediaType | null]> = [
    ["content-type wins", bareIndex, OCI_INDEX, OCI_INDEX],
    // The bodies below would detect differently on their own, so only the header can give the expected answer.
    ["content-type with charset", bareImage, `${DOCKER_MANIFEST}; charset=utf-8`, DOCKER_MANIFEST],
    ["content-type with spaced parameters", bareImage, `${DOCKER_MANIFEST} ;charset="utf-8"`, DOCKER_MANIFEST],
    ["content-type mixed case and spaces", bareImage, " Application/VND.Docker.Distribution.Manifest.V2+JSON ", DOCKER_MANIFEST],
    ["content-type over body field", dockerBody, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_LIST],
    ["generic content-type falls back to body field", dockerBody, "application/json", DOCKER_MANIFEST],
    ["octet-stream falls back to body field", listBody, "application/octet-stream", DOCKER_MANIFEST_LIST],
    ["no content-type, body field", listBody, null, DOCKER_MANIFEST_LIST],
    ["no mediaType, manifests array", bareIndex, null, OCI_INDEX],
    ["no mediaType, config and layers", bareImage, "text/plain", OCI_MANIFEST],
    ["no mediaType, layers without config", json({ schemaVersion: 2, layers: [] }), null, null],
    ["no mediaType, schemaVersion 1", json({ schemaVersion: 1, name: "a", tag: "b", fsLayers: [] }), null, null],
    ["no mediaType, schemaVersion missing", json({ manifests: [] }), null, null],
    ["unknown mediaType field", json({ schemaVersion: 2, mediaType: "application/vnd.oci.artifact.manifest.v1+json", manifests: [] }), null, null],
    ["mediaType field is not a string", json({ schemaVersion: 2, mediaType: 5, manifests: [] }), null, null],
    ["schema1 content-type", json({ schemaVersion: 1 }), "application/vnd.docker.distribution.manifest.v1+prettyjws", null],
    ["invalid JSON", utf8("{not json"), null, null],
    ["JSON array", utf8("[]"), null, null],
    ["JSON null", utf8("null"), "application/json", null],
    ["empty body", new Uint8Array(), null, null],
    ["invalid UTF-8", new Uint8Array([0x7b, 0xff, 0x7d]), null, null],
    ["empty body but a known content-type", new Uint8Array(), OCI_MANIFEST, OCI_MANIFEST],
  ];
  for (const [name, body, ct, want] of cases) t.equal(detectManifestMediaType(body, ct), want, name);
});

// Shaped like `docker manifest inspect` output for a multi-arch image on Docker Hub.
const dockerManifestList = {
  schemaVersion: 2,
  mediaType: DOCKER_MANIFEST_LIST,
  manifests: [
    {
      mediaType: DOCKER_MANIFEST,
      size: 528,
      digest: `sha256:${HEX_A}`,
      platform: { architecture: "amd64", os: "linux" },
    },
    {
      mediaType: DOCKER_MANIFEST,
      size: 528,
      digest: `sha256:${HEX_B}`,
      platform: { architecture: "arm", os: "linux", variant: "v7" },
    },
    {
      mediaType: DOCKER_MANIFEST,
      size: 528,
      digest: `sha256:${HEX_C}`,
      platform: { architecture: "arm64", os: "linux", variant: "v8" },
    },
    {
      mediaType: DOCKER_MANIFEST,
      size: 1125,
      digest: `sha256:${HEX_D}`,
      platform: { architecture: "amd64", os: "windows", "os.version": "10.0.20348.2340" },
    },
  ],
};

// BuildKit output with provenance: the attestation manifest is listed with platform unknown/unknown.
const ociIndexWithAttestation = {
  schemaVersion: 2,
  mediaType: OCI_INDEX,
  manifests: [
    {
      mediaType: OCI_MANIFEST,
      digest: `sha256:${HEX_A}`,
      size: 1019,
      platform: { architecture: "amd64", os: "linux" },
      annotations: { "org.opencontainers.image.created": "2024-06-01T00:00:00Z" },
    },
    {
      mediaType: OCI_MANIFEST,
      digest: `sha256:${HEX_B}`,
      size: 566,
      annotations: {
        "vnd.docker.reference.digest": `sha256:${HEX_A}`,
        "vnd.docker.reference.type": "attestation-manifest",
      },
      platform: { architecture: "unknown", os: "unknown" },
    },
  ],
};

const ociImageManifest = {
  schemaVersion: 2,
  mediaType: OCI_MANIFEST,
  config: {
    mediaType: "application/vnd.oci.image.config.v1+json",
    digest: `sha256:${HEX_C}`,
    size: 1471,
  },
  layers: [
    {
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      digest: `sha256:${HEX_D}`,
      size: 3623807,
    },
    {
      mediaType: "application/vnd.oci.image.layer.v1.tar+zstd",
      digest: `sha512:${HEX_512}`,
      size: 9007199254740991,
      annotations: { "org.opencontainers.image.title": "layer.tar" },
    },
  ],
  annotations: { "org.opencontainers.image.base.name": "docker.io/library/alpine:3.20" },
};

// Docker schema2 image manifest with a foreign (Windows) layer that carries urls.
const dockerImageManifest = {
  schemaVersion: 2,
  mediaType: DOCKER_MANIFEST,
  config: { mediaType: "application/vnd.docker.container.image.v1+json", size: 7023, digest: `sha256:${HEX_E}` },
  layers: [
    {
      mediaType: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
      size: 1718332879,
      digest: `sha256:${HEX_F}`,
      urls: ["https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:" + HEX_F],
    },
  ],
};

t.test("manifest shapes: what may be cached under a manifest media type", async (t) => {
  const layer = { mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: `sha256:${HEX_D}`, size: 10 };
  const config = { mediaType: "application/vnd.oci.image.config.v1+json", digest: `sha256:${HEX_C}`, size: 10 };
  const image = (over: Record<string, unknown>) => json({ schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers: [layer], ...over });
  const index = (manifests: unknown) => json({ schemaVersion: 2, mediaType: OCI_INDEX, manifests });
  // Real-world documents that must pass, byte-for-byte as registries send them.
  const good: Array<[string, Uint8Array, ManifestMediaType]> = [
    ["Docker Hub multi-arch list", json(dockerManifestList), DOCKER_MANIFEST_LIST],
    ["BuildKit index with an attestation manifest", json(ociIndexWithAttestation), OCI_INDEX],
    ["OCI image with a sha512 zstd layer and annotations", json(ociImageManifest), OCI_MANIFEST],
    ["Docker image with a foreign layer and urls", json(dockerImageManifest), DOCKER_MANIFEST],
    ["OCI index without a mediaType field", json({ schemaVersion: 2, manifests: [] }), OCI_INDEX],
    ["OCI image without a mediaType field, no layers (an artifact)", json({ schemaVersion: 2, config, layers: [] }), OCI_MANIFEST],
    [
      "Helm chart (OCI artifact)",
      json({
        schemaVersion: 2,
        config: { mediaType: "application/vnd.cncf.helm.config.v1+json", digest: `sha256:${HEX_A}`, size: 117 },
        layers: [{ mediaType: "application/vnd.cncf.helm.chart.content.v1.tar+gzip", digest: `sha256:${HEX_B}`, size: 3586 }],
        annotations: { "org.opencontainers.image.title": "nginx" },
      }),
      OCI_MANIFEST,
    ],
    [
      "OCI 1.1 artifact: empty config, artifactType, subject",
      json({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        artifactType: "application/vnd.dev.sigstore.bundle.v0.3+json",
        config: { mediaType: "application/vnd.oci.empty.v1+json", digest: `sha256:${HEX_E}`, size: 2, data: "e30=" },
        layers: [{ mediaType: "application/vnd.dev.sigstore.bundle.v0.3+json", digest: `sha256:${HEX_F}`, size: 4711 }],
        subject: { mediaType: OCI_INDEX, digest: `sha256:${HEX_A}`, size: 9000 },
      }),
      OCI_MANIFEST,
    ],
    ["a digest of an algorithm we do not hash ourselves", index([{ mediaType: OCI_MANIFEST, size: 1, digest: "blake3:a1b2c3" }]), OCI_INDEX],
    ["indented, with a trailing newline", utf8(JSON.stringify(ociImageManifest, null, 3) + "\n"), OCI_MANIFEST],
  ];
  for (const [name, body, mt] of good) t.equal(manifestShapeProblem(body, mt), null, name);

  const bad: Array<[string, Uint8Array, ManifestMediaType, RegExp]> = [
    ["an HTML login page", utf8("<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>"), OCI_MANIFEST, /^not JSON$/],
    ["a proxy's HTML error", utf8("<html><body><h1>502 Bad Gateway</h1></body></html>"), DOCKER_MANIFEST_LIST, /^not JSON$/],
    ["empty body", new Uint8Array(), OCI_MANIFEST, /empty body/],
    ["invalid UTF-8", new Uint8Array([0x7b, 0xff, 0x7d]), OCI_INDEX, /^not JSON$/],
    ["a JSON array", utf8("[]"), OCI_MANIFEST, /not an object \(an array\)/],
    ["JSON null", utf8("null"), OCI_MANIFEST, /not an object \(null\)/],
    ["a JSON string", utf8('"ok"'), OCI_MANIFEST, /not an object \(a string\)/],
    ["an OCI error body", json({ errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] }), OCI_MANIFEST, /schemaVersion is missing/],
    ["schema1", json({ schemaVersion: 1, name: "a", tag: "b", fsLayers: [], history: [] }), DOCKER_MANIFEST, /schemaVersion is 1, not 2/],
    ["schemaVersion as a string", image({ schemaVersion: "2" }), OCI_MANIFEST, /schemaVersion is a string/],
    ["mediaType field of another type", json(dockerManifestList), DOCKER_MANIFEST, /mediaType field .*manifest\.list\.v2\+json.* contradicts the content type/],
    ["image bytes under an index type", json(ociImageManifest), OCI_INDEX, /contradicts/],
    ["image without a mediaType field under an index type", json({ schemaVersion: 2, config, layers: [layer] }), OCI_INDEX, /manifests is missing/],
    ["missing config", image({ config: undefined }), OCI_MANIFEST, /config is missing/],
    ["missing layers", image({ layers: undefined }), OCI_MANIFEST, /layers is missing/],
    ["layers not an array", image({ layers: layer }), OCI_MANIFEST, /layers should be an array/],
    ["config without a digest", image({ config: { ...config, digest: undefined } }), OCI_MANIFEST, /config\.digest is missing/],
    ["layer with a truncated sha256", image({ layers: [{ ...layer, digest: "sha256:1234" }] }), OCI_MANIFEST, /layers\[0\]\.digest is invalid/],
    ["layer with an uppercase sha256", image({ layers: [{ ...layer, digest: `sha256:${HEX_D.toUpperCase()}` }] }), OCI_MANIFEST, /layers\[0\]\.digest/],
    ["layer with a string size", image({ layers: [{ ...layer, size: "10" }] }), OCI_MANIFEST, /layers\[0\]\.size should be a number/],
    ["layer with a negative size", image({ layers: [{ ...layer, size: -1 }] }), OCI_MANIFEST, /layers\[0\]\.size/],
    ["index entry without mediaType", index([{ size: 1, digest: `sha256:${HEX_A}` }]), OCI_INDEX, /manifests\[0\]\.mediaType is missing/],
    ["manifests not an array", index({}), OCI_INDEX, /manifests should be an array/],
  ];
  for (const [name, body, mt, want] of bad) t.match(manifestShapeProblem(body, mt), want, name);

  // What the log shows of the bytes: short and printable, never the whole page.
  t.equal(bytesPreview(utf8("<!DOCTYPE html>\n<html>")), '"<!DOCTYPE html>?<html>"');
  const long = bytesPreview(utf8("x".repeat(10_000)));
  t.ok(long.length < 50, "a long body is cut short");
});

t.test("tag list pagination: the next page from an upstream's Link header, as our own link", async (t) => {
  const cases: Array<[string | null, { n?: string; last?: string } | null]> = [
    ['</v2/library/alpine/tags/list?n=100&last=3.19>; rel="next"', { n: "100", last: "3.19" }],
    ["</v2/app/tags/list?last=v1.2.3&n=2>; rel=next", { n: "2", last: "v1.2.3" }],
    ['<https://registry.example.com/v2/app/tags/list?n=50&last=b>; rel="next"', { n: "50", last: "b" }],
    ['</v2/app/tags/list?n=5&last=a>; rel="prev", </v2/app/tags/list?n=5&last=z>; rel="next"', { n: "5", last: "z" }],
    ['</v2/app/tags/list?last=b&n=9999999999>; rel="next"', { last: "b" }], // an absurd n is dropped, not passed on
    ['</v2/app/tags/list?n=5>; rel="next"', null], // no last: it would be the same page again
    ['</v2/app/tags/list?n=5&last=a>; rel="prev"', null],
    ["not a link at all", null],
    ["", null],
    [null, null],
  ];
  for (const [header, want] of cases) t.strictSame(nextPageQuery(header), want, String(header));
  t.equal(nextPageLink("library/alpine", { n: "100", last: "3.19" }, null), '</v2/library/alpine/tags/list?n=100&last=3.19>; rel="next"');
  t.equal(nextPageLink("app", { last: "a>b; c" }, "docker.io"), '</v2/app/tags/list?last=a%3Eb%3B+c&ns=docker.io>; rel="next"', "escaped: cannot break out of <>");
});

t.test("WWW-Authenticate parsing", async (t) => {
  const cases: Array<[string, string, Challenge[]]> = [
    [
      "Docker Hub",
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
      [{ scheme: "bearer", params: { realm: "https://auth.docker.io/token", service: "registry.docker.io", scope: "repository:library/alpine:pull" } }],
    ],
    [
      "ghcr.io",
      'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull"',
      [{ scheme: "bearer", params: { realm: "https://ghcr.io/token", service: "ghcr.io", scope: "repository:user/image:pull" } }],
    ],
    [
      "quay.io",
      'Bearer realm="https://quay.io/v2/auth",service="quay.io",scope="repository:prometheus/node-exporter:pull"',
      [{ scheme: "bearer", params: { realm: "https://quay.io/v2/auth", service: "quay.io", scope: "repository:prometheus/node-exporter:pull" } }],
    ],
    [
      "gcr.io",
      'Bearer realm="https://gcr.io/v2/token",service="gcr.io",scope="repository:google-containers/pause:pull"',
      [{ scheme: "bearer", params: { realm: "https://gcr.io/v2/token", service: "gcr.io", scope: "repository:google-containers/pause:pull" } }],
    ],
    [
      "distribution /v2/ ping (no scope)",
      'Bearer realm="http://127.0.0.1:5001/auth",service="Docker registry"',
      [{ scheme: "bearer", params: { realm: "http://127.0.0.1:5001/auth", service: "Docker registry" } }],
    ],
    [
      "distribution htpasswd",
      'Basic realm="Registry Realm"',
      [{ scheme: "basic", params: { realm: "Registry Realm" } }],
    ],
    [
      "Harbor, multiple scopes in one param",
      'Bearer realm="https://harbor.example.com/service/token",service="harbor-registry",scope="repository:proj/app:pull,push"',
      [{ scheme: "bearer", params: { realm: "https://harbor.example.com/service/token", service: "harbor-registry", scope: "repository:proj/app:pull,push" } }],
    ],
    [
      "AWS ECR",
      'Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",service="ecr.amazonaws.com"',
      [{ scheme: "basic", params: { realm: "https://123456789012.dkr.ecr.us-east-1.amazonaws.com/", service: "ecr.amazonaws.com" } }],
    ],
    [
      "insufficient_scope error",
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push",error="insufficient_scope"',
      [
        {
          scheme: "bearer",
          params: {
            realm: "https://auth.docker.io/token",
            service: "registry.docker.io",
            scope: "repository:library/alpine:pull,push",
            error: "insufficient_scope",
          },
        },
      ],
    ],
    [
      "two challenges in one header",
      'Basic realm="registry", Bearer realm="https://auth.example.com/token",service="registry.example.com"',
      [
        { scheme: "basic", params: { realm: "registry" } },
        { scheme: "bearer", params: { realm: "https://auth.example.com/token", service: "registry.example.com" } },
      ],
    ],
    [
      "param-less challenge first",
      'Negotiate, Basic realm="x"',
      [
        { scheme: "negotiate", params: {} },
        { scheme: "basic", params: { realm: "x" } },
      ],
    ],
    [
      "token68 then another challenge",
      'Negotiate YIIFyQYGKwYBBQUCoIIF/TCCBfmg==, Bearer realm="r"',
      [
        { scheme: "negotiate", params: {}, token68: "YIIFyQYGKwYBBQUCoIIF/TCCBfmg==" },
        { scheme: "bearer", params: { realm: "r" } },
      ],
    ],
    [
      "escaped quotes and backslashes",
      String.raw`Bearer realm="say \"hi\"",service="back\\slash",x="\q"`,
      [{ scheme: "bearer", params: { realm: 'say "hi"', service: "back\\slash", x: "q" } }],
    ],
    [
      "commas and equals inside quoted values",
      'Bearer realm="https://a/token?x=1,y=2",scope="repository:a:pull,push repository:b:pull"',
      [{ scheme: "bearer", params: { realm: "https://a/token?x=1,y=2", scope: "repository:a:pull,push repository:b:pull" } }],
    ],
    [
      "extra whitespace everywhere",
      '   bearer    realm = "https://x/token" ,  service=  "x"  ,,  ',
      [{ scheme: "bearer", params: { realm: "https://x/token", service: "x" } }],
    ],
    [
      "tabs as whitespace",
      'Bearer\trealm="r",\tservice="s"',
      [{ scheme: "bearer", params: { realm: "r", service: "s" } }],
    ],
    [
      "unquoted values, including a URL",
      "Bearer realm=https://auth.example.com/token,service=registry.example.com,error=invalid_token",
      [{ scheme: "bearer", params: { realm: "https://auth.example.com/token", service: "registry.example.com", error: "invalid_token" } }],
    ],
    [
      "scheme and keys are lowercased, values are not",
      'BEARER Realm="https://X/Token",SERVICE="Reg"',
      [{ scheme: "bearer", params: { realm: "https://X/Token", service: "Reg" } }],
    ],
    ["empty header", "", []],
    ["only separators", " , ,, ", []],
    ["bare scheme", "Basic", [{ scheme: "basic", params: {} }]],
    [
      "repeated key: first wins",
      'Bearer realm="a",realm="b"',
      [{ scheme: "bearer", params: { realm: "a" } }],
    ],
    [
      "param before any scheme is skipped",
      'realm="x", Bearer realm="y"',
      [{ scheme: "bearer", params: { realm: "y" } }],
    ],
    [
      "garbage element is skipped",
      'Bearer realm="r", @@@, service="s"',
      [{ scheme: "bearer", params: { realm: "r", service: "s" } }],
    ],
    [
      "junk after a quoted value is skipped up to the next comma",
      'Bearer realm="r" junk, service="s"',
      [{ scheme: "bearer", params: { service: "s" } }],
    ],
    [
      "unterminated quote drops that param",
      'Bearer service="s", realm="https://never-closed',
      [{ scheme: "bearer", params: { service: "s" } }],
    ],
    [
      "quote glued to scheme is malformed",
      'Bearer"x", Basic realm="b"',
      [{ scheme: "basic", params: { realm: "b" } }],
    ],
  ];
  for (const [name, header, want] of cases) t.strictSame(parseWwwAuthenticate(header), want, name);

  // Hostile inputs must not throw or hang.
  for (const header of ['"', "\\", '=,="', "Bearer =", 'Bearer a="\\', ",".repeat(10000), 'Bearer x="'.repeat(1000), "__proto__=1", 'Bearer __proto__="x"']) {
    t.doesNotThrow(() => parseWwwAuthenticate(header), JSON.stringify(header.slice(0, 30)));
  }
  const proto = parseWwwAuthenticate('Bearer __proto__="x",constructor="y"');
  t.equal(proto[0]?.params["__proto__"], "x");
  t.equal(Object.getPrototypeOf({}).x, undefined, "no prototype pollution");
});

t.test("Bearer challenge formatting", async (t) => {
  const cases: Array<[Record<string, string>, string]> = [
    [
      { realm: "https://x/token", service: "x", scope: "repository:a/b:pull" },
      'Bearer realm="https://x/token",service="x",scope="repository:a/b:pull"',
    ],
    [{ realm: 'a "quoted" \\ value' }, String.raw`Bearer realm="a \"quoted\" \\ value"`],
    [
      { realm: "https://auth.example.com/token", service: "stowage", scope: "repository:a:pull,push", error: "insufficient_scope" },
      'Bearer realm="https://auth.example.com/token",service="stowage",scope="repository:a:pull,push",error="insufficient_scope"',
    ],
  ];
  for (const [params, want] of cases) {
    const header = formatBearerChallenge(params);
    t.equal(header, want);
    t.strictSame(parseWwwAuthenticate(header), [{ scheme: "bearer", params }], "round-trips");
  }
  t.throws(() => formatBearerChallenge({ "bad key": "x" }), TypeError);
  t.throws(() => formatBearerChallenge({ realm: "x\r\nSet-Cookie: a=b" }), TypeError);
});

t.test("Range parsing", async (t) => {
  const full: RangeRequest = { kind: "full" };
  const unsat: RangeRequest = { kind: "unsatisfiable" };
  const part = (start: number, end: number): RangeRequest => ({ kind: "partial", range: { start, end } });
  const cases: Array<[string | null, number, RangeRequest]> = [
    [null, 1000, full],
    ["", 1000, full],
    ["bytes=0-99", 1000, part(0, 99)],
    ["bytes=0-0", 1000, part(0, 0)],
    ["bytes=999-999", 1000, part(999, 999)],
    ["bytes=500-", 1000, part(500, 999)],
    ["bytes=0-", 1000, part(0, 999)],
    ["bytes=-100", 1000, part(900, 999)],
    ["bytes=-1", 1000, part(999, 999)],
    ["bytes=-5000", 1000, part(0, 999)], // suffix longer than the body: whole body
    ["bytes=900-5000", 1000, part(900, 999)], // end clamped
    ["bytes=0-99999999999999999999999", 1000, part(0, 999)],
    ["bytes=-0", 1000, unsat],
    ["bytes=1000-", 1000, unsat],
    ["bytes=1000-2000", 1000, unsat],
    ["bytes=99999999999999999999-", 1000, unsat],
    ["bytes=0-0", 0, unsat],
    ["bytes=0-", 0, unsat],
    ["bytes=-10", 0, unsat],
    ["bytes=5-2", 1000, full], // last < first: invalid, ignored
    ["bytes=5-2", 0, full],
    ["items=0-1", 1000, full],
    ["bytes=0-1,3-4", 1000, full],
    ["bytes=0-1, 3-4", 1000, full],
    ["bytes=-", 1000, full],
    ["bytes=", 1000, full],
    ["bytes", 1000, full],
    ["bytes=a-b", 1000, full],
    ["bytes=1.5-2", 1000, full],
    ["bytes=+1-2", 1000, full],
    ["bytes=-1-2", 1000, full],
    ["bytes 0-1", 1000, full],
    ["  bytes=10-20  ", 1000, part(10, 20)],
    ["bytes= 10-20", 1000, part(10, 20)],
    ["bytes=10 - 20", 1000, part(10, 20)],
    ["Bytes=10-20", 1000, part(10, 20)],
    ["bytes=10-20,", 1000, part(10, 20)], // an empty list element is not a second range
  ];
  for (const [header, size, want] of cases) t.strictSame(parseRange(header, size), want, `${JSON.stringify(header)} of ${size}`);
  t.throws(() => parseRange("bytes=0-1", -1), RangeError);
  t.throws(() => parseRange("bytes=0-1", 1.5), RangeError);
});

t.test("Content-Range values", async (t) => {
  t.equal(contentRange({ start: 0, end: 99 }, 1000), "bytes 0-99/1000");
  t.equal(contentRange({ start: 999, end: 999 }, 1000), "bytes 999-999/1000");
  t.equal(unsatisfiedRange(1000), "bytes */1000");
  t.equal(unsatisfiedRange(0), "bytes */0");
  const r = parseRange("bytes=-100", 3623807);
  t.equal(r.kind === "partial" ? contentRange(r.range, 3623807) : "", "bytes 3623707-3623806/3623807");
});

t.test("registry errors", async (t) => {
  const statuses: Array<[ErrorCode, number]> = [
    ["BLOB_UNKNOWN", 404],
    ["MANIFEST_UNKNOWN", 404],
    ["NAME_UNKNOWN", 404],
    ["DIGEST_INVALID", 400],
    ["MANIFEST_INVALID", 400],
    ["NAME_INVALID", 400],
    ["SIZE_INVALID", 400],
    ["UNAUTHORIZED", 401],
    ["DENIED", 403],
    ["UNSUPPORTED", 405],
    ["TOOMANYREQUESTS", 429],
    ["UNAVAILABLE", 503],
    ["RANGE_INVALID", 416],
  ];
  for (const [code, status] of statuses) {
    t.equal(defaultStatus(code), status, code);
    const e = new RegistryError(code, "m");
    t.equal(e.status, status, `${code} default status`);
    t.equal(e.code, code);
    t.strictSame(e.headers, {});
    t.equal(e.detail, undefined);
  }

  const cause = new Error("socket hang up");
  const headers = { "Retry-After": "60" };
  const e = new RegistryError("TOOMANYREQUESTS", "upstream rate limit", { status: 503, detail: { upstream: "docker.io" }, headers, cause });
  t.ok(e instanceof Error);
  t.ok(e instanceof RegistryError);
  t.equal(e.name, "RegistryError");
  t.equal(e.message, "upstream rate limit");
  t.equal(e.status, 503, "explicit status wins");
  t.strictSame(e.detail, { upstream: "docker.io" });
  t.strictSame(e.headers, { "Retry-After": "60" });
  t.equal(e.cause, cause);
  headers["Retry-After"] = "1";
  t.equal(e.headers["Retry-After"], "60", "headers are copied");
});

t.test("error bodies", async (t) => {
  const cases: Array<[string, Parameters<typeof errorBody>[0], unknown]> = [
    [
      "single error without detail",
      [{ code: "MANIFEST_UNKNOWN", message: "manifest unknown" }],
      { errors: [{ code: "MANIFEST_UNKNOWN", message: "manifest unknown" }] },
    ],
    [
      "detail object kept",
      [{ code: "UNAUTHORIZED", message: "authentication required", detail: [{ Type: "repository", Name: "library/alpine", Action: "pull" }] }],
      { errors: [{ code: "UNAUTHORIZED", message: "authentication required", detail: [{ Type: "repository", Name: "library/alpine", Action: "pull" }] }] },
    ],
    [
      "falsy details kept, undefined dropped",
      [
        { code: "NAME_INVALID", message: "a", detail: null },
        { code: "DIGEST_INVALID", message: "b", detail: "" },
        { code: "BLOB_UNKNOWN", message: "c", detail: undefined },
      ],
      {
        errors: [
          { code: "NAME_INVALID", message: "a", detail: null },
          { code: "DIGEST_INVALID", message: "b", detail: "" },
          { code: "BLOB_UNKNOWN", message: "c" },
        ],
      },
    ],
    ["no errors", [], { errors: [] }],
    [
      "message with quotes and newlines is escaped",
      [{ code: "DENIED", message: 'requested access to "a"\nis denied' }],
      { errors: [{ code: "DENIED", message: 'requested access to "a"\nis denied' }] },
    ],
  ];
  for (const [name, errors, want] of cases) {
    const body = errorBody(errors);
    const parsed = JSON.parse(body) as { errors: Array<Record<string, unknown>> };
    t.strictSame(parsed, want, name);
    for (const entry of parsed.errors) t.strictSame(Object.keys(entry).slice(0, 2), ["code", "message"], `${name}: key order`);
  }
  const noDetail = JSON.parse(errorBody([{ code: "BLOB_UNKNOWN", message: "x" }])) as { errors: Array<Record<string, unknown>> };
  t.notOk("detail" in noDetail.errors[0]!, "detail key absent");
});

t.test("token service answers: which token, for how long", async (t) => {
  const jwt = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhY2Nlc3MiOltdfQ.c2ln";
  const cases: Array<[string, unknown, IssuedToken | null]> = [
    // Docker Hub sends the same JWT twice, with expires_in and issued_at.
    ["Docker Hub", { token: jwt, access_token: jwt, expires_in: 300, issued_at: "2026-12-03T09:00:00.000Z" }, { token: jwt, seconds: 300 }],
    ["ghcr.io: token only, no lifetime", { token: "djE6Z2hjcjp0b2tlbg==" }, { token: "djE6Z2hjcjp0b2tlbg==", seconds: DEFAULT_TOKEN_SECONDS }],
    ["quay.io", { token: jwt }, { token: jwt, seconds: DEFAULT_TOKEN_SECONDS }],
    ["GitLab", { token: jwt, expires_in: 900, issued_at: "2026-12-03T09:00:00Z" }, { token: jwt, seconds: 900 }],
    ["an empty access_token next to a good token", { token: jwt, access_token: "", expires_in: 1800 }, { token: jwt, seconds: 1800 }],
    ["an empty token next to a good access_token", { token: "", access_token: jwt }, { token: jwt, seconds: DEFAULT_TOKEN_SECONDS }],
    ["OAuth2 form (POST): access_token only", { access_token: jwt, expires_in: 300, scope: "repository:a/b:pull", token_type: "Bearer" }, { token: jwt, seconds: 300 }],
    ["token wins over access_token", { token: "first", access_token: "second" }, { token: "first", seconds: DEFAULT_TOKEN_SECONDS }],
    ["a ten-year lifetime is capped", { token: jwt, expires_in: 315_360_000 }, { token: jwt, seconds: MAX_TOKEN_SECONDS }],
    ["a fractional lifetime is kept", { token: jwt, expires_in: 59.5 }, { token: jwt, seconds: 59.5 }],
    ["zero lifetime: the default", { token: jwt, expires_in: 0 }, { token: jwt, seconds: DEFAULT_TOKEN_SECONDS }],
    ["negative lifetime: the default", { token: jwt, expires_in: -1 }, { token: jwt, seconds: DEFAULT_TOKEN_SECONDS }],
    ["lifetime as a string: the default", { token: jwt, expires_in: "300" }, { token: jwt, seconds: DEFAULT_TOKEN_SECONDS }],
    ["empty token", { token: "" }, null],
    ["no token at all", { expires_in: 300 }, null],
    ["an error document", { errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] }, null],
    ["token not a string", { token: 42 }, null],
    ["null", null, null],
    ["an array", [{ token: jwt }], null],
    ["a bare string", jwt, null],
  ];
  for (const [name, body, want] of cases) t.strictSame(issuedToken(body), want, name);
});
