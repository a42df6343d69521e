#pragma once
// IDX files (the MNIST family's format), plain or gzip-compressed, and Fashion-MNIST as Debian's
// dataset-fashion-mnist package installs it (/usr/share/datasets/fashion-mnist). No download.
//
// IDX: a big-endian header — two zero bytes, a type byte (0x08: unsigned byte), the number of
// dimensions, then one 32-bit size per dimension — followed by the data, row-major.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace apiary::data {

class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct IdxArray {
  std::vector<std::uint32_t> dims;
  std::vector<std::uint8_t> values;  // row-major
};

// Reads an unsigned-byte IDX file (".gz" or not, detected by content). Throws DataError naming
// the file for a missing file, a bad header, a type other than unsigned byte, or truncated data.
IdxArray read_idx(const std::string& path);

struct ImageSet {
  std::uint32_t rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;  // images x rows x cols
  std::vector<std::uint8_t> labels;  // one per image, 0..9
  std::size_t size() const { return labels.size(); }
  // Image i as floats in [0, 1].
  std::vector<float> image(std::size_t i) const;
};

inline const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
// `split` is "train" (60,000 images) or "t10k" (10,000). Checks that images and labels agree.
ImageSet load_fashion_mnist(const std::string& split, const std::string& dir = kFashionMnistDir);

}  // namespace apiary::data
