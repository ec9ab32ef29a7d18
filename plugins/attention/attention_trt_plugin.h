// TensorRT binding of the fused attention kernel: an IPluginV3 (core, build and runtime
// capabilities) and its IPluginCreatorV3One. Fields num_heads, key_dim, val_dim (int32) and scale
// (float32), serialised with the engine. Inputs, by count (all fp32 or all fp16, linear format):
//   2: self-attention   (qkv [B, N, H*(2*Dq+Dv)], bias [H, N, N]); per token and head q, k, v;
//   3: downsample       (kv [B, Nk, H*(Dq+Dv)], q [B, Nq, H*Dq], bias [H, Nq, Nk]); per head k, v.
// Output 0: [B, Nq, H*Dv], the input type.
#pragma once

#include <cstdint>

#include <NvInferRuntime.h>

namespace levit_attention
{

//! The plugin's fields, as the ONNX node's attributes name them.
struct AttentionPluginFields
{
    int32_t numHeads{0};
    int32_t keyDim{0};
    int32_t valueDim{0};
    float scale{1.0F};
};

class AttentionPlugin final : public nvinfer1::IPluginV3,
                              public nvinfer1::IPluginV3OneCore,
                              public nvinfer1::IPluginV3OneBuild,
                              public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit AttentionPlugin(AttentionPluginFields const& fields);
    AttentionPlugin(AttentionPlugin const& other);
    AttentionPlugin& operator=(AttentionPlugin const&) = delete;
    ~AttentionPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Checks ranks and the sizes that are known (dims of -1 are checked at onShapeChange).
    bool checkDims(nvinfer1::Dims const* inputs, int32_t nbInputs) const noexcept;
    void refreshSerialFields() noexcept;

    AttentionPluginFields mFields;
    int32_t mInputCount{0}; //!< 2 (self-attention) or 3 (downsample), known from configurePlugin/onShapeChange
    nvinfer1::PluginField mSerialField[4];
    nvinfer1::PluginFieldCollection mSerialFields;
};

class AttentionPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    AttentionPluginCreator();
    ~AttentionPluginCreator() override = default;

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    nvinfer1::PluginField mFieldNames[4];
    nvinfer1::PluginFieldCollection mFieldCollection;
};

} // namespace levit_attention
