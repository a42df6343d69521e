#include "harness/data/idx.hpp"

#include <zlib.h>

namespace apiary::data {

namespace {

std::vector<std::uint8_t> read_all(const std::string& path) {
  // gzopen reads plain files as they are and gzip files decompressed.
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw DataError(path + ": cannot open");
  std::vector<std::uint8_t> out;
  std::uint8_t buf[1 << 16];
  for (;;) {
    const int n = gzread(f, buf, sizeof buf);
    if (n < 0) {
      int err = 0;
      const std::string why = gzerror(f, &err);
      gzclose(f);
      throw DataError(path + ": " + why);
    }
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
    if (out.size() > (std::size_t{1} << 32)) {
      gzclose(f);
      throw DataError(path + ": larger than 4 GiB");
    }
  }
  gzclose(f);
  return out;
}

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

}  // namespace

IdxArray read_idx(const std::string& path) {
  const auto bytes = read_all(path);
  if (bytes.size() < 4 || bytes[0] != 0 || bytes[1] != 0) throw DataError(path + ": not an IDX file (bad magic)");
  if (bytes[2] != 0x08) throw DataError(path + ": IDX element type " + std::to_string(bytes[2]) + " is not unsigned byte (8)");
  const std::size_t ndims = bytes[3];
  if (ndims == 0 || bytes.size() < 4 + 4 * ndims) throw DataError(path + ": truncated IDX header");
  IdxArray a;
  std::uint64_t count = 1;
  for (std::size_t d = 0; d < ndims; ++d) {
    a.dims.push_back(be32(&bytes[4 + 4 * d]));
    count *= a.dims.back();
  }
  const std::size_t at = 4 + 4 * ndims;
  if (bytes.size() - at != count)
    throw DataError(path + ": header says " + std::to_string(count) + " values, the file holds " + std::to_string(bytes.size() - at));
  a.values.assign(bytes.begin() + static_cast<std::ptrdiff_t>(at), bytes.end());
  return a;
}

std::vector<float> ImageSet::image(std::size_t i) const {
  const std::size_t n = std::size_t{rows} * cols;
  std::vector<float> out(n);
  for (std::size_t k = 0; k < n; ++k) out[k] = static_cast<float>(pixels[i * n + k]) / 255.0f;
  return out;
}

ImageSet load_fashion_mnist(const std::string& split, const std::string& dir) {
  if (split != "train" && split != "t10k") throw DataError("Fashion-MNIST split must be 'train' or 't10k', not '" + split + "'");
  const std::string images = dir + "/" + split + "-images-idx3-ubyte.gz";
  const std::string labels = dir + "/" + split + "-labels-idx1-ubyte.gz";
  auto img = read_idx(images);
  auto lab = read_idx(labels);
  if (img.dims.size() != 3) throw DataError(images + ": expected 3 dimensions (images, rows, cols)");
  if (lab.dims.size() != 1) throw DataError(labels + ": expected 1 dimension");
  if (img.dims[0] != lab.dims[0])
    throw DataError(images + " has " + std::to_string(img.dims[0]) + " images but " + labels + " has " +
                    std::to_string(lab.dims[0]) + " labels");
  for (auto l : lab.values)
    if (l > 9) throw DataError(labels + ": label " + std::to_string(l) + " outside 0..9");
  ImageSet s;
  s.rows = img.dims[1];
  s.cols = img.dims[2];
  s.pixels = std::move(img.values);
  s.labels = std::move(lab.values);
  return s;
}

}  // namespace apiary::data
